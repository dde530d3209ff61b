using System.Text;

namespace Untorn.Tests;

/// <summary>
/// Lazy checkpointing: committed blocks wait in memory and go home in a batch when the log fills,
/// and the journal tail then moves in the next commit record's epoch. A workload of many small
/// fsynced appends fills a 1 MiB journal several times; its recorded device writes are cut at every
/// flush (checked in memory: recovery, then every fsynced append intact) and, in every epoch that
/// moves the tail, after every write and at random torn subsets (also judged by e2fsck).
/// </summary>
public class Jbd2CheckpointTests
{
    private sealed record Append(string File, long Offset, byte[] Data)
    {
        public int DurableAfterWrites = int.MaxValue;
    }

    [Fact]
    public void LogFilledRepeatedly_EveryCrashStateAroundTailMoves_RecoversWithFsyncedAppends()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"untorn-ckpt-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(dir, "tree"));
        try
        {
            string[] files = ["/a", "/b"];
            foreach (var f in files) File.WriteAllBytes(Path.Combine(dir, "tree") + f, []);
            var imagePath = Path.Combine(dir, "base.img");
            using (var fh = File.Create(imagePath)) fh.SetLength(16 << 20);
            var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", "-t", "ext4", "-b", "1024", "-J", "size=1", "-d", Path.Combine(dir, "tree"), imagePath]);
            Assert.True(rc == 0, output);
            var baseImage = File.ReadAllBytes(imagePath);
            long jsbOffset;
            using (var probe = Ext4Fs.Open(new MemoryBlockDevice(baseImage.ToArray(), readOnly: true), new OpenOptions { ReadOnly = true }))
                jsbOffset = (long)Jbd2Journal.Open(probe).Physical(0) * probe.Super.BlockSize;

            var rec = new RecordingBlockDevice(baseImage.ToArray());
            var appends = new List<Append>();
            var rng = new Random(17);
            using (var fs = Ext4Fs.Open(rec, new OpenOptions { CommitInterval = TimeSpan.Zero }))
            {
                var fds = files.ToDictionary(f => f, f => fs.Open(Encoding.UTF8.GetBytes(f), OpenFlags.RdWr, 0));
                var sizes = files.ToDictionary(f => f, _ => 0L);
                for (int i = 0; i < 480; i++)
                {
                    var f = files[rng.Next(files.Length)];
                    var a = new Append(f, sizes[f], new byte[rng.Next(1, 1500)]);
                    rng.NextBytes(a.Data);
                    fs.Pwrite(fds[f], a.Data, a.Offset);
                    sizes[f] += a.Data.Length;
                    fs.Fsync(fds[f]);
                    a.DurableAfterWrites = rec.WriteCount;
                    appends.Add(a);
                }
            }

            var ops = rec.Ops;
            int tailMoves = 0, fsckStates = 0, writes = 0, writesAtFlush = 0, epochStart = 0;
            var image = baseImage.ToArray();
            var states = new Random(29);
            for (int i = 0; i < ops.Count; i++)
            {
                if (ops[i].Data != null) continue;
                // ops[epochStart..i) are the writes of one epoch; `image` holds everything before it.
                var epoch = ops.GetRange(epochStart, i - epochStart);
                bool movesTail = epoch.Any(o => o.Offset == jsbOffset);
                if (movesTail)
                {
                    tailMoves++;
                    var prefix = image.ToArray();
                    for (int w = 0; w < epoch.Count; w++)
                    {
                        epoch[w].Data!.CopyTo(prefix.AsSpan((int)epoch[w].Offset));
                        Check(prefix.ToArray(), writesAtFlush, appends, dir, fsck: true, $"prefix {w + 1} of the epoch after write {writesAtFlush}");
                        fsckStates++;
                    }
                    for (int t = 0; t < 3 && epoch.Count > 1; t++)
                    {
                        var img = image.ToArray();
                        var subset = epoch.Where(_ => states.Next(2) == 0).OrderBy(_ => states.Next()).ToList();
                        for (int k = 0; k < subset.Count; k++)
                        {
                            var d = subset[k].Data!;
                            int len = k == subset.Count - 1 ? states.Next(d.Length / 512 + 1) * 512 : d.Length;
                            d.AsSpan(0, len).CopyTo(img.AsSpan((int)subset[k].Offset));
                        }
                        Check(img, writesAtFlush, appends, dir, fsck: true, $"torn subset of the epoch after write {writesAtFlush}");
                        fsckStates++;
                    }
                }
                foreach (var o in epoch) o.Data!.CopyTo(image.AsSpan((int)o.Offset));
                writes += epoch.Count;
                writesAtFlush = writes;
                epochStart = i + 1;
                if (!movesTail) Check(image.ToArray(), writesAtFlush, appends, dir, fsck: false, $"flush after write {writes}");
            }
            // Open, Close, and the batches in between: the log must have filled and moved on.
            Assert.True(tailMoves >= 4, $"only {tailMoves} epochs moved the journal tail: the lazy checkpoint never ran");
            TestContext.Current.SendDiagnosticMessage($"{tailMoves} tail moves, {fsckStates} states judged by e2fsck, {writes} device writes");
        }
        finally { Directory.Delete(dir, true); }
    }

    private static void Check(byte[] crashed, int durableWrites, List<Append> appends, string dir, bool fsck, string what)
    {
        using (Ext4Fs.Open(new MemoryBlockDevice(crashed), new OpenOptions { CommitInterval = TimeSpan.Zero })) { } // recovery
        if (fsck)
        {
            var file = Path.Combine(dir, "crash.img");
            File.WriteAllBytes(file, crashed);
            var (code, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", file]);
            Assert.True(code == 0, $"{what}: e2fsck -fn after untorn's recovery:\n{output}");
        }
        using var ro = Ext4Fs.Open(new MemoryBlockDevice(crashed, readOnly: true), new OpenOptions { ReadOnly = true });
        foreach (var a in appends)
        {
            long size = (long)ro.Statx(AtFlags.Root, Encoding.UTF8.GetBytes(a.File), 0, StatxMask.BasicStats).Size;
            if (size <= a.Offset)
            {
                Assert.False(durableWrites >= a.DurableAfterWrites, $"{what}: {a.File}@{a.Offset} was fsynced but is gone");
                continue;
            }
            int fd = ro.Open(Encoding.UTF8.GetBytes(a.File), OpenFlags.RdOnly, 0);
            var got = new byte[a.Data.Length];
            Assert.Equal(a.Data.Length, ro.Pread(fd, got, a.Offset));
            ro.Close(fd);
            Assert.True(got.AsSpan().SequenceEqual(a.Data), $"{what}: {a.File}@{a.Offset} is visible but its bytes differ");
        }
    }
}
