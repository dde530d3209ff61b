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
/// Each contender gets a fresh image per repetition; repetitions interleave the contenders.
/// </summary>
internal static class JournalBench
{
    private const long ImageBytes = 1L << 30;
    private const int OverwriteFileBytes = 64 << 20, OverwriteBytes = 16 << 10, CreateBytes = 4 << 10;

    private enum Loop { Create4K, Overwrite16K }

    private sealed record Result(double OpsPerSecond, double CpuUsPerOp, double FlushesPerOp = double.NaN, double WritesPerOp = double.NaN, double KiBPerOp = double.NaN)
    {
        /// <summary>untorn only: microseconds per op in device flushes, device writes, and the engine itself.</summary>
        public (double Flush, double Write, double Engine)? Split { get; init; }
    }

    public static void Run(BenchOptions opts)
    {
        Console.WriteLine("== journal: fsync-bound loops on a 1 GiB image (issue 4) ==");
        if (Images.Which("mke2fs") == null)
        {
            Console.WriteLine("SKIP: mke2fs is not installed (apt-get install e2fsprogs)\n");
            return;
        }
        double seconds = opts.Quick ? 0.5 : 4;
        Console.WriteLine($"""
            (A) create + 4 KiB pwrite + fsync + close of a new file in one directory; (B) 16 KiB pwrite at a
            random 16 KiB-aligned offset of a 64 MiB file (written and synced first) + fdatasync. Each loop runs
            {seconds} s per contender and repetition ({opts.Repeat} repetition(s), contenders interleaved, a fresh
            image each). untorn: Ext4Fs on the image file (Fsync, Fdatasync: what untorn_fsync/fdatasync call).
            kernel: mount -o loop (data=ordered, barriers on). raw: pwrite + fdatasync on the image file
            ((A) into new sparse ranges, (B) into a written 64 MiB range). ops/s: median [min..max].

            """);
        string mnt = Path.Combine(opts.WorkDir, "mnt");
        string? kernelSkip = KernelSkipReason(opts.WorkDir, mnt);
        if (kernelSkip != null) Console.WriteLine($"kernel: SKIP ({kernelSkip})\n");

        var results = new Dictionary<(string, Loop), List<Result>>();
        void Add(string who, Loop loop, Result r)
        {
            if (!results.TryGetValue((who, loop), out var list)) results[(who, loop)] = list = [];
            list.Add(r);
        }
        string? fsckNote = null;
        for (int rep = 0; rep < opts.Repeat; rep++)
        {
            foreach (var loop in Enum.GetValues<Loop>())
            {
                Add("untorn", loop, RunUntorn(opts.WorkDir, loop, seconds, ref fsckNote));
                if (kernelSkip == null) Add("kernel", loop, RunKernel(opts.WorkDir, mnt, loop, seconds));
                Add("raw", loop, RunRaw(opts.WorkDir, loop, seconds));
            }
        }

        var table = new Table("loop", "contender", "ops/s", "[min..max]", "vs kernel", "vs raw", "CPU us/op", "flushes/op", "dev writes/op", "KiB written/op");
        foreach (var loop in Enum.GetValues<Loop>())
        {
            double Median(string who) => results.TryGetValue((who, loop), out var l) ? MedianOf(l.Select(r => r.OpsPerSecond)) : double.NaN;
            foreach (string who in (string[])["untorn", "kernel", "raw"])
            {
                if (!results.TryGetValue((who, loop), out var list)) continue;
                double m = Median(who);
                var last = list[^1];
                table.Add(loop == Loop.Create4K ? "A create+4K+fsync" : "B 16K overwrite+fdatasync", who, $"{m:F0}",
                    $"[{list.Min(r => r.OpsPerSecond):F0}..{list.Max(r => r.OpsPerSecond):F0}]",
                    double.IsNaN(Median("kernel")) ? "-" : $"{m / Median("kernel"):F2}x", $"{m / Median("raw"):F2}x",
                    $"{MedianOf(list.Select(r => r.CpuUsPerOp)):F0}",
                    double.IsNaN(last.FlushesPerOp) ? "-" : $"{last.FlushesPerOp:F2}",
                    double.IsNaN(last.WritesPerOp) ? "-" : $"{last.WritesPerOp:F1}",
                    double.IsNaN(last.KiBPerOp) ? "-" : $"{last.KiBPerOp:F1}");
            }
        }
        table.Print();
        foreach (var loop in Enum.GetValues<Loop>())
            if (results.TryGetValue(("untorn", loop), out var l) && l[^1].Split is { } split)
                Console.WriteLine($"untorn {loop}: per op {split.Flush:F0} us in flushes (fdatasync of the image), {split.Write:F0} us in device writes, {split.Engine:F0} us in the engine");
        Console.WriteLine();
        if (fsckNote != null) Console.WriteLine(fsckNote + "\n");
    }

    private static double MedianOf(IEnumerable<double> values)
    {
        var v = values.Order().ToArray();
        return v.Length == 0 ? double.NaN : v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }

    // Runs `op` until `seconds` pass; returns ops/s and this process's CPU time per op (user and
    // system: the kernel's own ext4 work for the loop-mounted contender is in the system part).
    // The first ops (untimed) compile the code paths.
    private static (int Ops, double PerSecond, double CpuUs) Timed(double seconds, Action<int> op, Action? afterWarmUp = null)
    {
        const int warm = 20;
        for (int w = 0; w < warm; w++) op(w);
        afterWarmUp?.Invoke();
        var cpu = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        int i = warm;
        while (sw.Elapsed.TotalSeconds < seconds) op(i++);
        double elapsed = sw.Elapsed.TotalSeconds;
        cpu = Process.GetCurrentProcess().TotalProcessorTime - cpu;
        int ops = i - warm;
        return (ops, ops / elapsed, cpu.TotalMicroseconds / ops);
    }

    private static Result RunUntorn(string dir, Loop loop, double seconds, ref string? fsckNote)
    {
        string path = Images.Make(dir, "journal-untorn.img", ImageBytes);
        var dev = new CountingDevice(new FileBlockDevice(path, readOnly: false));
        Result result;
        using (var fs = Ext4Fs.Open(dev))
        {
            var data = Payload(loop == Loop.Create4K ? CreateBytes : OverwriteBytes);
            var rng = new Random(4);
            const int rw = OpenFlags.RdWr;
            if (loop == Loop.Create4K) fs.Mkdir("/b"u8, 0x1ED);
            else
            {
                int fd = fs.Open("/ow"u8, rw | OpenFlags.Creat, 0x1A4);
                fs.Pwrite(fd, new byte[OverwriteFileBytes], 0);
                fs.Fsync(fd);
                fs.Close(fd);
            }
            int ow = loop == Loop.Overwrite16K ? fs.Open("/ow"u8, rw, 0) : -1;
            var before = default(CountingDevice.Counts);
            var (ops, perSecond, cpuUs) = Timed(seconds, i =>
            {
                if (loop == Loop.Create4K)
                {
                    int fd = fs.Open(Encoding.UTF8.GetBytes($"/b/f{i}"), rw | OpenFlags.Creat | OpenFlags.Excl, 0x1A4);
                    fs.Pwrite(fd, data, 0);
                    fs.Fsync(fd);
                    fs.Close(fd);
                }
                else
                {
                    fs.Pwrite(ow, data, (long)rng.Next(OverwriteFileBytes / OverwriteBytes) * OverwriteBytes);
                    fs.Fdatasync(ow);
                }
            }, () => before = dev.Snapshot());
            var d = dev.Snapshot() - before;
            double us = 1e6 / Stopwatch.Frequency / ops, flushUs = d.FlushTicks * us, writeUs = d.WriteTicks * us;
            result = new Result(perSecond, cpuUs, (double)d.Flushes / ops, (double)d.Writes / ops, d.Bytes / 1024.0 / ops)
            {
                Split = (flushUs, writeUs, 1e6 / perSecond - flushUs - writeUs),
            };
            if (ow >= 0) fs.Close(ow);
        }
        if (fsckNote == null || fsckNote.Contains("clean"))
        {
            var (code, output) = Images.TryRun("e2fsck", "-fn", path);
            fsckNote = code == 0 ? "e2fsck -fn after untorn's runs: clean" : $"e2fsck -fn after untorn's {loop} run: NOT CLEAN ({code})\n{output}";
        }
        Images.Delete(path);
        return result;
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

    private static Result RunKernel(string dir, string mnt, Loop loop, double seconds)
    {
        string path = Images.Make(dir, "journal-kernel.img", ImageBytes);
        Images.Run("mount", "-o", "loop", path, mnt);
        try
        {
            var data = Payload(loop == Loop.Create4K ? CreateBytes : OverwriteBytes);
            var rng = new Random(4);
            string ow = Path.Combine(mnt, "ow"), b = Path.Combine(mnt, "b");
            if (loop == Loop.Create4K) Directory.CreateDirectory(b);
            else
            {
                using var h = File.OpenHandle(ow, FileMode.CreateNew, FileAccess.ReadWrite);
                RandomAccess.Write(h, new byte[OverwriteFileBytes], 0);
                RandomAccess.FlushToDisk(h);
            }
            using var owHandle = loop == Loop.Overwrite16K ? File.OpenHandle(ow, FileMode.Open, FileAccess.ReadWrite) : null;
            var (_, perSecond, cpuUs) = Timed(seconds, i =>
            {
                if (loop == Loop.Create4K)
                {
                    using var h = File.OpenHandle(Path.Combine(b, $"f{i}"), FileMode.CreateNew, FileAccess.ReadWrite);
                    RandomAccess.Write(h, data, 0);
                    RandomAccess.FlushToDisk(h); // fsync(2)
                }
                else
                {
                    RandomAccess.Write(owHandle!, data, (long)rng.Next(OverwriteFileBytes / OverwriteBytes) * OverwriteBytes);
                    FdataSync(owHandle!);
                }
            });
            return new Result(perSecond, cpuUs);
        }
        finally
        {
            Images.Run("umount", mnt);
            Images.Delete(path);
        }
    }

    private static Result RunRaw(string dir, Loop loop, double seconds)
    {
        string path = Images.Make(dir, "journal-raw.img", ImageBytes);
        try
        {
            var data = Payload(loop == Loop.Create4K ? CreateBytes : OverwriteBytes);
            var rng = new Random(4);
            const long region = ImageBytes / 2; // past what mke2fs wrote
            using var h = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            if (loop == Loop.Overwrite16K)
            {
                RandomAccess.Write(h, new byte[OverwriteFileBytes], region);
                RandomAccess.FlushToDisk(h);
            }
            var (_, perSecond, cpuUs) = Timed(seconds, i =>
            {
                long at = loop == Loop.Create4K ? region + (long)i * CreateBytes % region : region + (long)rng.Next(OverwriteFileBytes / OverwriteBytes) * OverwriteBytes;
                RandomAccess.Write(h, data, at);
                FdataSync(h);
            });
            return new Result(perSecond, cpuUs, 1, 1, data.Length / 1024.0);
        }
        finally { Images.Delete(path); }
    }

    private static byte[] Payload(int n)
    {
        var b = new byte[n];
        new Random(n).NextBytes(b);
        return b;
    }

    [DllImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    private static extern int fdatasync(SafeFileHandle fd);

    private static void FdataSync(SafeFileHandle h)
    {
        if (fdatasync(h) != 0) throw new IOException($"fdatasync failed: errno {Marshal.GetLastPInvokeError()}");
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
