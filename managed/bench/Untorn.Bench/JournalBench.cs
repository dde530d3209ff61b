using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Untorn.Bench;

/// <summary>
/// Issue 4's benchmark: two fsync-bound loops on a 1 GiB image made by mke2fs -t ext4 -b 4096 —
/// (A) create a file, write 4 KiB, fsync, close; (B) overwrite 16 KiB at a random aligned offset of
/// a 64 MiB file, fdatasync — through untorn (Ext4Fs on the image file), through the Linux kernel's
/// ext4 on the same kind of image loop-mounted (root only; skipped with the reason otherwise), and
/// as raw pwrite+fdatasync of the image file (the floor: one data write and one flush per op).
/// The contenders run at once, each on its own fresh image, in short slices taken in turn, so noise
/// from the rest of the machine falls on all of them alike; each round of slices is one sample.
/// </summary>
internal static class JournalBench
{
    internal const long ImageBytes = 1L << 30;
    internal const int OverwriteFileBytes = 64 << 20, OverwriteBytes = 16 << 10, CreateBytes = 4 << 10;
    private const double SliceSeconds = 0.25;

    internal enum Loop { Create4K, Overwrite16K }

    public static void Run(BenchOptions opts)
    {
        Console.WriteLine("== journal: fsync-bound loops on a 1 GiB image (issue 4) ==");
        if (Images.Which("mke2fs") == null)
        {
            Console.WriteLine("SKIP: mke2fs is not installed (apt-get install e2fsprogs)\n");
            return;
        }
        int rounds = opts.Quick ? 2 : 8 * opts.Repeat;
        Console.WriteLine($"""
            (A) create + 4 KiB pwrite + fsync + close of a new file in one directory; (B) 16 KiB pwrite at a
            random 16 KiB-aligned offset of a 64 MiB file (written and synced first) + fdatasync.
            untorn: Ext4Fs on the image file (Fsync, Fdatasync: what untorn_fsync/untorn_fdatasync call).
            kernel: mount -o loop (data=ordered, barriers on). raw: pwrite + fdatasync on the image file
            ((A) into new sparse ranges, (B) into a written 64 MiB range). Each contender has a fresh image;
            they take turns in {SliceSeconds} s slices, {rounds} rounds per loop (20 untimed ops first).
            ops/s: all ops over all slices; [min..max]: the rounds' spread. CPU: this process's user+system
            time per op (the kernel's ext4 work runs partly in loop worker threads, not counted).

            """);
        string mnt = Path.Combine(opts.WorkDir, "mnt");
        string? kernelSkip = KernelSkipReason(opts.WorkDir, mnt);
        if (kernelSkip != null) Console.WriteLine($"kernel: SKIP ({kernelSkip})\n");

        var table = new Table("loop", "contender", "ops/s", "[min..max]", "vs kernel", "vs raw", "CPU us/op", "flushes/op", "dev writes/op", "KiB written/op");
        var notes = new List<string>();
        foreach (var loop in Enum.GetValues<Loop>())
        {
            var contenders = new List<Contender> { new UntornContender(opts.WorkDir, loop) };
            if (kernelSkip == null) contenders.Add(new KernelContender(opts.WorkDir, mnt, loop));
            contenders.Add(new RawContender(opts.WorkDir, loop));
            try
            {
                foreach (var c in contenders) c.Setup();
                for (int r = 0; r < rounds; r++)
                    foreach (var c in contenders) c.Slice(SliceSeconds);
            }
            finally
            {
                foreach (var c in contenders) c.Teardown();
            }
            string name = loop == Loop.Create4K ? "A create+4K+fsync" : "B 16K overwrite+fdatasync";
            double kernel = contenders.Find(c => c.Name == "kernel")?.OpsPerSecond ?? double.NaN;
            double raw = contenders.Find(c => c.Name == "raw")!.OpsPerSecond;
            foreach (var c in contenders)
            {
                table.Add(name, c.Name, $"{c.OpsPerSecond:F0}", $"[{c.Rounds.Min():F0}..{c.Rounds.Max():F0}]",
                    double.IsNaN(kernel) ? "-" : $"{c.OpsPerSecond / kernel:F2}x", $"{c.OpsPerSecond / raw:F2}x", $"{c.CpuUsPerOp:F0}",
                    c.Counts is { } d ? $"{(double)d.Flushes / c.Ops:F2}" : "-", c.Counts is { } w ? $"{(double)w.Writes / c.Ops:F1}" : "-",
                    c.Counts is { } b ? $"{b.Bytes / 1024.0 / c.Ops:F1}" : "-");
                notes.AddRange(c.Notes);
            }
        }
        table.Print();
        foreach (var n in notes) Console.WriteLine(n);
        Console.WriteLine();
    }

    private static string? KernelSkipReason(string dir, string mnt)
    {
        if (!OperatingSystem.IsLinux()) return "not Linux";
        if (Environment.UserName != "root") return "needs root for mount -o loop";
        if (Images.Which("mount") == null) return "mount is not installed";
        string probe = Images.Make(dir, "journal-probe.img", 64L << 20);
        Directory.CreateDirectory(mnt);
        var (code, output) = Images.TryRun("mount", "-o", "loop", probe, mnt);
        if (code == 0) Images.TryRun("umount", mnt);
        Images.Delete(probe);
        return code == 0 ? null : $"mount -o loop failed: {output.Trim()}";
    }

    internal static byte[] Payload(int n)
    {
        var b = new byte[n];
        new Random(n).NextBytes(b);
        return b;
    }

    [DllImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    private static extern int fdatasync(SafeFileHandle fd);

    internal static void FdataSync(SafeFileHandle h)
    {
        if (fdatasync(h) != 0) throw new IOException($"fdatasync failed: errno {Marshal.GetLastPInvokeError()}");
    }
}

/// <summary>One way of running a loop: set up once, then timed slices in turn with the others.</summary>
internal abstract class Contender(string name, JournalBench.Loop loop)
{
    private int _next;
    private long _ticks;
    private TimeSpan _cpu;
    private bool _warm;

    public string Name => name;
    protected JournalBench.Loop Loop => loop;
    protected Random Rng { get; } = new(4);
    public int Ops { get; private set; }
    public List<double> Rounds { get; } = [];
    public List<string> Notes { get; } = [];
    public double OpsPerSecond => Ops * (double)Stopwatch.Frequency / _ticks;
    public double CpuUsPerOp => _cpu.TotalMicroseconds / Ops;
    /// <summary>What untorn asked of its device during the timed slices (null for the others).</summary>
    public virtual CountingDevice.Counts? Counts => null;

    public abstract void Setup();
    public abstract void Teardown();
    protected abstract void Op(int i);
    protected virtual void SliceStarting() { }
    protected virtual void SliceEnded() { }

    // The first slice begins with untimed ops that compile the code paths.
    public void Slice(double seconds)
    {
        if (!_warm)
        {
            for (int w = 0; w < 20; w++) Op(_next++);
            _warm = true;
        }
        SliceStarting();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        long t0 = Stopwatch.GetTimestamp(), limit = (long)(seconds * Stopwatch.Frequency);
        int ops = 0;
        long now;
        do
        {
            Op(_next++);
            ops++;
            now = Stopwatch.GetTimestamp();
        } while (now - t0 < limit);
        _cpu += Process.GetCurrentProcess().TotalProcessorTime - cpu;
        _ticks += now - t0;
        Ops += ops;
        Rounds.Add(ops * (double)Stopwatch.Frequency / (now - t0));
        SliceEnded();
    }

    protected long OverwriteOffset() => (long)Rng.Next(JournalBench.OverwriteFileBytes / JournalBench.OverwriteBytes) * JournalBench.OverwriteBytes;
}

internal sealed class UntornContender(string dir, JournalBench.Loop loop) : Contender("untorn", loop)
{
    private string _path = "";
    private CountingDevice? _dev;
    private Ext4Fs? _fs;
    private int _ow = -1;
    private byte[] _data = [];
    private CountingDevice.Counts _total, _sliceStart;
    private readonly long[] _phaseTicks = new long[4]; // (A) create, pwrite, fsync, close

    public override CountingDevice.Counts? Counts => _total;

    public override void Setup()
    {
        _path = Images.Make(dir, "journal-untorn.img", JournalBench.ImageBytes);
        _dev = new CountingDevice(new FileBlockDevice(_path, readOnly: false));
        _fs = Ext4Fs.Open(_dev);
        _data = JournalBench.Payload(Loop == JournalBench.Loop.Create4K ? JournalBench.CreateBytes : JournalBench.OverwriteBytes);
        if (Loop == JournalBench.Loop.Create4K) _fs.Mkdir("/b"u8, 0x1ED);
        else
        {
            _ow = _fs.Open("/ow"u8, OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
            _fs.Pwrite(_ow, new byte[JournalBench.OverwriteFileBytes], 0);
            _fs.Fsync(_ow);
        }
    }

    protected override void Op(int i)
    {
        var fs = _fs!;
        if (Loop == JournalBench.Loop.Create4K)
        {
            long t0 = Stopwatch.GetTimestamp();
            int fd = fs.Open(Encoding.UTF8.GetBytes($"/b/f{i}"), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4);
            long t1 = Stopwatch.GetTimestamp();
            fs.Pwrite(fd, _data, 0);
            long t2 = Stopwatch.GetTimestamp();
            fs.Fsync(fd);
            long t3 = Stopwatch.GetTimestamp();
            fs.Close(fd);
            long t4 = Stopwatch.GetTimestamp();
            if (i >= 20)
            {
                _phaseTicks[0] += t1 - t0;
                _phaseTicks[1] += t2 - t1;
                _phaseTicks[2] += t3 - t2;
                _phaseTicks[3] += t4 - t3;
            }
        }
        else
        {
            fs.Pwrite(_ow, _data, OverwriteOffset());
            fs.Fdatasync(_ow);
        }
    }

    protected override void SliceStarting() => _sliceStart = _dev!.Snapshot();
    protected override void SliceEnded() => _total += _dev!.Snapshot() - _sliceStart;

    public override void Teardown()
    {
        if (_fs == null) return;
        if (_ow >= 0) _fs.Close(_ow);
        _fs.Dispose();
        _fs = null;
        if (Ops > 0)
        {
            double us = 1e6 / Stopwatch.Frequency / Ops, flush = _total.FlushTicks * us, write = _total.WriteTicks * us;
            Notes.Add($"untorn {Loop}: per op {flush:F0} us in flushes (fdatasync of the image), {write:F0} us in device writes, {1e6 / OpsPerSecond - flush - write:F0} us in the engine");
            if (Loop == JournalBench.Loop.Create4K)
                Notes.Add($"untorn {Loop}: per op {_phaseTicks[0] * us:F0} us in open(O_CREAT), {_phaseTicks[1] * us:F0} us in pwrite, {_phaseTicks[2] * us:F0} us in fsync, {_phaseTicks[3] * us:F0} us in close");
        }
        var (code, output) = Images.TryRun("e2fsck", "-fn", _path);
        Notes.Add(code == 0 ? $"untorn {Loop}: e2fsck -fn of its image afterwards: clean" : $"untorn {Loop}: e2fsck -fn NOT CLEAN ({code})\n{output}");
        Images.Delete(_path);
    }
}

internal sealed class KernelContender(string dir, string mnt, JournalBench.Loop loop) : Contender("kernel", loop)
{
    private string _path = "";
    private bool _mounted;
    private SafeFileHandle? _ow;
    private byte[] _data = [];
    private string? _stat; // the loop device's /sys/block/loopN/stat: what the kernel's ext4 asked of it
    private CountingDevice.Counts _total, _sliceStart;

    public override CountingDevice.Counts? Counts => _stat == null ? null : _total;

    protected override void SliceStarting() => _sliceStart = LoopStat();
    protected override void SliceEnded() => _total += LoopStat() - _sliceStart;

    // Block-layer requests (after merging), sectors and flush requests (Documentation/block/stat.rst).
    private CountingDevice.Counts LoopStat()
    {
        if (_stat == null) return default;
        var f = File.ReadAllText(_stat).Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(long.Parse).ToArray();
        return new CountingDevice.Counts(f[4], f[6] * 512, f.Length > 15 ? f[15] : 0, 0, 0);
    }

    public override void Setup()
    {
        _path = Images.Make(dir, "journal-kernel.img", JournalBench.ImageBytes);
        Images.Run("mount", "-o", "loop", _path, mnt);
        _mounted = true;
        var (code, loops) = Images.TryRun("losetup", "-j", _path);
        string dev = code == 0 ? loops.Split(':')[0].Trim() : "";
        if (dev.StartsWith("/dev/loop") && File.Exists($"/sys/block/{dev[5..]}/stat")) _stat = $"/sys/block/{dev[5..]}/stat";
        _data = JournalBench.Payload(Loop == JournalBench.Loop.Create4K ? JournalBench.CreateBytes : JournalBench.OverwriteBytes);
        if (Loop == JournalBench.Loop.Create4K) Directory.CreateDirectory(Path.Combine(mnt, "b"));
        else
        {
            _ow = File.OpenHandle(Path.Combine(mnt, "ow"), FileMode.CreateNew, FileAccess.ReadWrite);
            RandomAccess.Write(_ow, new byte[JournalBench.OverwriteFileBytes], 0);
            RandomAccess.FlushToDisk(_ow);
        }
    }

    protected override void Op(int i)
    {
        if (Loop == JournalBench.Loop.Create4K)
        {
            using var h = File.OpenHandle(Path.Combine(mnt, "b", $"f{i}"), FileMode.CreateNew, FileAccess.ReadWrite);
            RandomAccess.Write(h, _data, 0);
            RandomAccess.FlushToDisk(h); // fsync(2)
        }
        else
        {
            RandomAccess.Write(_ow!, _data, OverwriteOffset());
            JournalBench.FdataSync(_ow!);
        }
    }

    public override void Teardown()
    {
        _ow?.Dispose();
        if (_mounted) Images.Run("umount", mnt);
        _mounted = false;
        if (_path.Length > 0) Images.Delete(_path);
    }
}

internal sealed class RawContender(string dir, JournalBench.Loop loop) : Contender("raw", loop)
{
    private const long Region = JournalBench.ImageBytes / 2; // past what mke2fs wrote
    private string _path = "";
    private SafeFileHandle? _h;
    private byte[] _data = [];

    public override void Setup()
    {
        _path = Images.Make(dir, "journal-raw.img", JournalBench.ImageBytes);
        _h = File.OpenHandle(_path, FileMode.Open, FileAccess.ReadWrite);
        _data = JournalBench.Payload(Loop == JournalBench.Loop.Create4K ? JournalBench.CreateBytes : JournalBench.OverwriteBytes);
        if (Loop == JournalBench.Loop.Overwrite16K)
        {
            RandomAccess.Write(_h, new byte[JournalBench.OverwriteFileBytes], Region);
            RandomAccess.FlushToDisk(_h);
        }
    }

    protected override void Op(int i)
    {
        long at = Loop == JournalBench.Loop.Create4K ? Region + (long)i * JournalBench.CreateBytes % Region : Region + OverwriteOffset();
        RandomAccess.Write(_h!, _data, at);
        JournalBench.FdataSync(_h!);
    }

    public override void Teardown()
    {
        _h?.Dispose();
        if (_path.Length > 0) Images.Delete(_path);
    }
}

/// <summary>An image file that counts what the engine asks of it: writes, bytes, flushes (fdatasync).</summary>
internal sealed class CountingDevice(IBlockDevice inner) : IBlockDevice
{
    private long _writes, _bytes, _flushes, _writeTicks, _flushTicks;

    public readonly record struct Counts(long Writes, long Bytes, long Flushes, long WriteTicks, long FlushTicks)
    {
        public static Counts operator -(Counts a, Counts b) =>
            new(a.Writes - b.Writes, a.Bytes - b.Bytes, a.Flushes - b.Flushes, a.WriteTicks - b.WriteTicks, a.FlushTicks - b.FlushTicks);
        public static Counts operator +(Counts a, Counts b) =>
            new(a.Writes + b.Writes, a.Bytes + b.Bytes, a.Flushes + b.Flushes, a.WriteTicks + b.WriteTicks, a.FlushTicks + b.FlushTicks);
    }

    public Counts Snapshot() => new(Interlocked.Read(ref _writes), Interlocked.Read(ref _bytes), Interlocked.Read(ref _flushes),
        Interlocked.Read(ref _writeTicks), Interlocked.Read(ref _flushTicks));

    public long Size => inner.Size;
    public bool IsReadOnly => inner.IsReadOnly;
    public int SectorSize => inner.SectorSize;
    public AtomicWriteLimits AtomicWrite => inner.AtomicWrite;
    public void Read(long offset, Span<byte> buffer) => inner.Read(offset, buffer);

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        Interlocked.Increment(ref _writes);
        Interlocked.Add(ref _bytes, buffer.Length);
        long t0 = Stopwatch.GetTimestamp();
        inner.Write(offset, buffer);
        Interlocked.Add(ref _writeTicks, Stopwatch.GetTimestamp() - t0);
    }

    public void Flush()
    {
        Interlocked.Increment(ref _flushes);
        long t0 = Stopwatch.GetTimestamp();
        inner.Flush();
        Interlocked.Add(ref _flushTicks, Stopwatch.GetTimestamp() - t0);
    }

    public void Dispose() => inner.Dispose();
}
