using System.Text;

namespace Untorn.Tests;

/// <summary>A device that records every write and flush of a workload, for building crash images.</summary>
internal sealed class RecordingBlockDevice(byte[] image) : IBlockDevice
{
    public sealed record Op(long Offset, byte[]? Data); // Data null: a flush

    private readonly MemoryBlockDevice _inner = new(image);
    private readonly Lock _lock = new();
    public List<Op> Ops { get; } = [];

    public long Size => _inner.Size;
    public bool IsReadOnly => false;
    public int SectorSize => 512;
    public void Read(long offset, Span<byte> buffer) => _inner.Read(offset, buffer);

    public void Write(long offset, ReadOnlySpan<byte> buffer)
    {
        lock (_lock)
        {
            _inner.Write(offset, buffer);
            Ops.Add(new Op(offset, buffer.ToArray()));
        }
    }

    public void Flush()
    {
        lock (_lock) Ops.Add(new Op(0, null));
    }

    public int WriteCount
    {
        get { lock (_lock) return Ops.Count(o => o.Data != null); }
    }

    public void Dispose() { }
}

/// <summary>
/// The crash-state harness: a workload's device writes are recorded; crash images are built from
/// every prefix of them and, after the last flush of each prefix, from random subsets in random
/// order with the last write torn at a 512-byte sector. Each crash image is recovered by untorn
/// (journal replay) and then must be e2fsck-clean, every write whose fsync returned must be there
/// byte for byte, and every other write must be wholly there or wholly absent (ordered mode: no
/// committed extent ever points at data that did not reach the device).
/// </summary>
public class CrashHarnessTests
{
    private sealed record Region(string File, long Offset, byte[] Data)
    {
        public int DurableAfterWrites = int.MaxValue; // device writes issued when its fsync returned
    }

    [Theory]
    [InlineData("-t ext4 -b 4096", 1)]
    [InlineData("-t ext4 -b 1024", 2)]
    [InlineData("-t ext4 -b 4096 -O ^metadata_csum,^64bit", 3)]
    [InlineData("-t ext4 -b 1024 -O bigalloc -C 4096 -g 2048", 4)] // clusters filled block by block; -g: two groups, so a torn primary superblock has a backup
    public void Appends_EveryCrashState_RecoversCleanWithDurableWritesIntact(string mkfsArgs, int seed)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"untorn-crash-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(dir, "tree"));
        try
        {
            string[] files = ["/a", "/b", "/c"];
            foreach (var f in files) File.WriteAllBytes(Path.Combine(dir, "tree") + f, []);
            var imagePath = Path.Combine(dir, "base.img");
            using (var fh = File.Create(imagePath)) fh.SetLength(16 << 20);
            var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", .. mkfsArgs.Split(' '), "-d", Path.Combine(dir, "tree"), imagePath]);
            Assert.True(rc == 0, output);
            var baseImage = File.ReadAllBytes(imagePath);

            // The workload: appends, some followed by fsync, recorded.
            var rec = new RecordingBlockDevice(baseImage.ToArray());
            var regions = new List<Region>();
            var rng = new Random(seed);
            using (var fs = Ext4Fs.Open(rec, new OpenOptions { CommitInterval = TimeSpan.Zero }))
            {
                var fds = files.ToDictionary(f => f, f => fs.Open(Encoding.UTF8.GetBytes(f), OpenFlags.RdWr, 0));
                var sizes = files.ToDictionary(f => f, _ => 0L);
                var unsynced = new List<Region>();
                for (int i = 0; i < 24; i++)
                {
                    var f = files[rng.Next(files.Length)];
                    var data = new byte[rng.Next(1, 20000)];
                    rng.NextBytes(data);
                    var r = new Region(f, sizes[f], data);
                    fs.Pwrite(fds[f], data, sizes[f]);
                    sizes[f] += data.Length;
                    regions.Add(r);
                    unsynced.Add(r);
                    if (rng.Next(3) == 0)
                    {
                        fs.Fsync(fds[f]);
                        foreach (var u in unsynced) u.DurableAfterWrites = rec.WriteCount;
                        unsynced.Clear();
                    }
                }
            }

            var ops = rec.Ops;
            int checkedStates = 0;
            var imageFile = Path.Combine(dir, "crash.img");
            void check(byte[] crashed, int durableWrites, string what)
            {
                checkedStates++;
                var dev = new MemoryBlockDevice(crashed);
                using (var fs = Ext4Fs.Open(dev, new OpenOptions { CommitInterval = TimeSpan.Zero })) { } // recovery happens here
                File.WriteAllBytes(imageFile, crashed);
                var (code, fsck) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", imageFile]);
                Assert.True(code == 0, $"seed {seed} {what}: e2fsck -fn after untorn's recovery:\n{fsck}");
                using var ro = Ext4Fs.Open(new MemoryBlockDevice(crashed, readOnly: true), new OpenOptions { ReadOnly = true });
                foreach (var r in regions)
                {
                    long size = (long)ro.Statx(AtFlags.Root, Encoding.UTF8.GetBytes(r.File), 0, StatxMask.BasicStats).Size;
                    bool durable = durableWrites >= r.DurableAfterWrites;
                    if (size <= r.Offset)
                    {
                        Assert.False(durable, $"seed {seed} {what}: {r.File}@{r.Offset} was fsynced but is gone");
                        continue;
                    }
                    Assert.True(size >= r.Offset + r.Data.Length, $"seed {seed} {what}: {r.File} size {size} cuts the write at {r.Offset}+{r.Data.Length}");
                    int fd = ro.Open(Encoding.UTF8.GetBytes(r.File), OpenFlags.RdOnly, 0);
                    var got = new byte[r.Data.Length];
                    ro.Pread(fd, got, r.Offset);
                    ro.Close(fd);
                    Assert.True(got.AsSpan().SequenceEqual(r.Data), $"seed {seed} {what}: {r.File}@{r.Offset} is visible but its bytes differ");
                }
            }

            // Every prefix of the write sequence (flushes are barriers, so a prefix is always a possible state).
            int writesSoFar = 0, writesAtLastFlush = 0;
            var prefix = baseImage.ToArray();
            var sinceFlush = new List<RecordingBlockDevice.Op>();
            var states = new Random(seed * 7919);
            check(prefix.ToArray(), 0, "no writes");
            foreach (var op in ops)
            {
                if (op.Data == null)
                {
                    // Random reorderings and subsets of the writes since the previous flush, the last one torn.
                    for (int t = 0; t < 3 && sinceFlush.Count > 1; t++)
                    {
                        var img = ApplyUpTo(baseImage, ops, writesAtLastFlush);
                        var subset = sinceFlush.Where(_ => states.Next(2) == 0).OrderBy(_ => states.Next()).ToList();
                        for (int i = 0; i < subset.Count; i++)
                        {
                            var w = subset[i];
                            int len = i == subset.Count - 1 ? states.Next(w.Data!.Length / 512 + 1) * 512 : w.Data!.Length;
                            w.Data.AsSpan(0, Math.Min(len, w.Data.Length)).CopyTo(img.AsSpan((int)w.Offset));
                        }
                        check(img, writesAtLastFlush, $"subset after write {writesAtLastFlush}");
                    }
                    writesAtLastFlush = writesSoFar;
                    sinceFlush.Clear();
                    continue;
                }
                op.Data.CopyTo(prefix.AsSpan((int)op.Offset));
                writesSoFar++;
                sinceFlush.Add(op);
                check(prefix.ToArray(), writesAtLastFlush, $"prefix of {writesSoFar} writes");
            }
            Assert.True(checkedStates > 50, $"only {checkedStates} crash states");
            TestContext.Current.SendDiagnosticMessage($"{mkfsArgs}: {checkedStates} crash states checked ({writesSoFar} device writes)");
        }
        finally { Directory.Delete(dir, true); }
    }

    private static byte[] ApplyUpTo(byte[] baseImage, List<RecordingBlockDevice.Op> ops, int writes)
    {
        var img = baseImage.ToArray();
        int n = 0;
        foreach (var op in ops)
        {
            if (op.Data == null) continue;
            if (n++ >= writes) break;
            op.Data.CopyTo(img.AsSpan((int)op.Offset));
        }
        return img;
    }
}
