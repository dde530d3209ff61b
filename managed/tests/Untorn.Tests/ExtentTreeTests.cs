using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// The extent tree writer under seeded random inserts, removals and unwritten conversions, with
/// trees grown to depth 2 and shrunk again. debugfs's extent dump must equal the model block for
/// block and e2fsck -fn must find the tree, i_blocks and bitmaps consistent.
/// </summary>
public partial class ExtentTreeTests
{
    /// <summary>First-fit over the engine's bitmaps, marking through the handle (stands in for mballoc here).</summary>
    private sealed class FirstFitAllocator(Ext4Fs fs) : IExtentBlockAllocator
    {
        private readonly Random _rng = new(5);
        public ulong NodeSectors => (ulong)fs.Super.BlockSize / 512;

        public ulong AllocateNodeBlock(TransactionManager.Handle h, ulong goal) => AllocateRun(h, 1);

        public void FreeNodeBlock(TransactionManager.Handle h, ulong block) => Free(h, block, 1);

        /// <summary>A contiguous run of `count` free blocks starting at a random group.</summary>
        public ulong AllocateRun(TransactionManager.Handle h, uint count)
        {
            uint groups = fs.Super.GroupCount;
            uint start = (uint)_rng.Next((int)groups);
            for (uint k = 0; k < groups; k++)
            {
                uint g = (start + k) % groups;
                var bitmap = fs.BlockBitmaps.Read(g);
                uint n = fs.BlockBitmaps.ClustersInGroup(g), run = 0;
                uint from = (uint)_rng.Next((int)n);
                for (uint i = 0; i < n; i++)
                {
                    uint c = (from + i) % n;
                    if (c == 0) run = 0;
                    run = (bitmap[c >> 3] & (1 << (int)(c & 7))) == 0 ? run + 1 : 0;
                    if (run == count)
                    {
                        fs.BlockBitmaps.Mark(h, g, c - count + 1, count, used: true);
                        Superblock.AddFreeCounts(h, fs.Super.BlockSize, -count, 0);
                        return fs.Groups.GroupFirstBlock(g) + c - count + 1;
                    }
                }
            }
            throw new Ext4Exception(Errno.ENOSPC, "test allocator: no run");
        }

        public void Free(TransactionManager.Handle h, ulong block, uint count)
        {
            uint g = (uint)((block - fs.Super.FirstDataBlock) / fs.Super.BlocksPerGroup);
            fs.BlockBitmaps.Mark(h, g, (uint)(block - fs.Groups.GroupFirstBlock(g)), count, used: false);
            Superblock.AddFreeCounts(h, fs.Super.BlockSize, count, 0);
        }
    }

    [GeneratedRegex(@"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*(Uninit)?\s*$", RegexOptions.Multiline)]
    private static partial Regex ExtentLine();

    [Theory]
    [InlineData("-t ext4 -b 1024", 128, 1)]
    [InlineData("-t ext4 -b 1024 -O ^metadata_csum", 128, 2)]
    [InlineData("-t ext4 -b 4096", 256, 3)]
    [InlineData("-t ext4 -b 1024 -O ^64bit", 128, 4)]
    public void RandomOperations_DebugfsExtentsEqualModel_FsckClean(string mkfsArgs, int sizeMiB, int seed)
    {
        var image = Path.Combine(Path.GetTempPath(), $"untorn-ext-{Guid.NewGuid():N}.img");
        var empty = image + ".empty";
        try
        {
            using (var f = File.Create(image)) f.SetLength((long)sizeMiB << 20);
            File.WriteAllBytes(empty, []);
            var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", .. mkfsArgs.Split(' '), image]);
            Assert.True(rc == 0, output);
            (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-w", "-R", $"write {empty} f", image]);
            Assert.True(rc == 0, output);

            var model = new SortedDictionary<uint, (ulong Phys, bool Unwritten)>();
            var rng = new Random(seed);
            // Phase 1 grows the tree (to depth 2 with 1 KiB blocks), phase 2 shrinks it; both are checked.
            foreach (var (from, to) in new[] { (0, 1500), (1500, 2300) })
            {
            int maxDepthSeen = 0;
            using (var fs = Ext4Fs.Open(image))
            {
                var tm = new TransactionManager(fs.Cache, new InPlaceCommitWriter(fs.Cache.Inner, fs.Super.BlockSize));
                var alloc = new FirstFitAllocator(fs);
                uint ino = LookupIno(fs, "/f");
                int bs = fs.Super.BlockSize;
                const uint span = 6000; // logical blocks the file may use
                for (int step = from; step < to; step++)
                {
                    using var h = tm.Start();
                    var inode = InodeBuffer.Load(fs, ino);
                    var tree = new ExtentTree(fs, h, inode, alloc);
                    // grow for the first 1500 steps, then mostly shrink, so depth rises and falls
                    int op = rng.Next(step < 1500 ? 10 : 4);
                    if (op >= 3)
                    {
                        uint first = (uint)rng.Next((int)span), len = (uint)rng.Next(1, 4);
                        if (Enumerable.Range((int)first, (int)len).Any(b => model.ContainsKey((uint)b))) { h.Complete(); continue; }
                        bool unwritten = rng.Next(3) == 0;
                        ulong phys = alloc.AllocateRun(h, len);
                        tree.Insert(new Extent(first, len, phys, unwritten));
                        for (uint i = 0; i < len; i++) model[first + i] = (phys + i, unwritten);
                        inode.Sectors += len * (ulong)bs / 512;
                    }
                    else if (op == 2)
                    {
                        uint first = (uint)rng.Next((int)span), len = (uint)rng.Next(1, 200);
                        tree.MarkWritten(first, len);
                        foreach (var b in model.Keys.Where(b => b >= first && b < first + len).ToList())
                            model[b] = (model[b].Phys, false);
                    }
                    else
                    {
                        uint first = (uint)rng.Next((int)span), len = (uint)rng.Next(1, step < 1500 ? 20 : 40);
                        var removed = tree.Remove(first, len);
                        var expected = model.Where(kv => kv.Key >= first && kv.Key < first + len).ToList();
                        var got = removed.SelectMany(e => Enumerable.Range(0, (int)e.Length)
                            .Select(i => new KeyValuePair<uint, (ulong, bool)>(e.First + (uint)i, (e.Physical + (ulong)i, e.Unwritten)))).ToList();
                        Assert.Equal(expected, got);
                        foreach (var e in removed) alloc.Free(h, e.Physical, e.Length);
                        foreach (var kv in expected) model.Remove(kv.Key);
                        inode.Sectors -= (ulong)expected.Count * (ulong)bs / 512;
                    }
                    inode.Size = model.Count == 0 ? 0 : ((ulong)model.Keys.Last() + 1) * (ulong)bs;
                    inode.Save(h, fs);
                    h.Complete();
                    maxDepthSeen = Math.Max(maxDepthSeen, inode.BlockArray[6]);
                    if (step % 100 == 0) tm.Commit();
                }
                tm.Commit();
            }
            if (from == 0) Assert.True(maxDepthSeen >= 2 || !mkfsArgs.Contains("1024"), $"tree only reached depth {maxDepthSeen}");

            (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
            Assert.True(rc == 0, $"seed {seed}: e2fsck -fn exit {rc}\n{output}");

            (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", "ex /f", image]);
            Assert.True(rc == 0, output);
            var dumped = new SortedDictionary<uint, (ulong, bool)>();
            foreach (Match m in ExtentLine().Matches(output))
            {
                if (m.Groups[1].Value != m.Groups[2].Value) continue; // index levels
                uint first = uint.Parse(m.Groups[3].Value), last = uint.Parse(m.Groups[4].Value);
                ulong phys = ulong.Parse(m.Groups[5].Value);
                for (uint b = first; b <= last; b++) dumped[b] = (phys + (b - first), m.Groups[8].Success);
            }
            Assert.True(model.Count > 200, $"only {model.Count} blocks mapped: the comparison would be weak");
            Assert.Equal(model.Count, dumped.Count);
            Assert.Equal(model, dumped);
            TestContext.Current.SendDiagnosticMessage($"{mkfsArgs} steps {from}-{to}: {model.Count} blocks mapped, depth {maxDepthSeen}");
            }
        }
        finally
        {
            File.Delete(image);
            File.Delete(empty);
        }
    }

    private static uint LookupIno(Ext4Fs fs, string path)
    {
        int fd = fs.Open(System.Text.Encoding.UTF8.GetBytes(path), OpenFlags.RdOnly, 0);
        try { return fs.Files.Get(fd).Inode.Number; }
        finally { fs.Close(fd); }
    }
}
