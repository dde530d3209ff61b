using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// Orphans: files unlinked while open, crashed before their last close. The crashed image must
/// carry the record (dumpe2fs shows it, e2fsck -fy finds the inode through it) and untorn's
/// recovery at the next read-write open must leave the same free counts as e2fsck -fy and the
/// kernel's mount leave on copies of the same image, e2fsck-clean. Both on-disk forms: the
/// s_last_orphan list and the orphan file (mke2fs -O orphan_file).
/// </summary>
public class OrphanTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);
    private static readonly OpenOptions NoTimer = new() { CommitInterval = TimeSpan.Zero };

    public static TheoryData<string> Layouts => new(
        "-b 4096",
        "-b 1024",
        "-b 4096 -O ^metadata_csum,^64bit",
        "-b 4096 -O orphan_file",
        "-b 1024 -O orphan_file",
        "-b 4096 -O orphan_file,^metadata_csum",
        "-b 4096 -O bigalloc -C 16384",
        "-b 1024 -O bigalloc,orphan_file -C 4096");

    private static bool UsesOrphanFile(string mkfs) => mkfs.Contains("orphan_file");

    private sealed class Scratch : IDisposable
    {
        public string Dir { get; } = Path.Combine(Path.GetTempPath(), $"untorn-orphan-{Guid.NewGuid():N}");
        public Scratch() => Directory.CreateDirectory(Dir);
        public string File(string name) => Path.Combine(Dir, name);
        public void Dispose() => Directory.Delete(Dir, true);
    }

    private static byte[] MakeImage(Scratch s, string mkfsArgs, int megabytes = 32)
    {
        var path = s.File("base.img");
        using (var fh = File.Create(path)) fh.SetLength((long)megabytes << 20);
        var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", "-t", "ext4", .. mkfsArgs.Split(' '), path]);
        if (rc != 0 && mkfsArgs.Contains("orphan_file")) Assert.Skip("this mke2fs cannot make orphan_file (needs e2fsprogs >= 1.47): " + output.Trim());
        Assert.True(rc == 0, output);
        return File.ReadAllBytes(path);
    }

    /// <summary>dumpe2fs -h: the superblock as e2fsprogs reads it.</summary>
    private static string Header(string image)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("dumpe2fs"), ["-h", image]);
        Assert.True(rc == 0, output);
        return output;
    }

    private static (long Blocks, long Inodes) FreeCounts(string image)
    {
        var h = Header(image);
        return (long.Parse(Regex.Match(h, @"Free blocks:\s+(\d+)").Groups[1].Value),
                long.Parse(Regex.Match(h, @"Free inodes:\s+(\d+)").Groups[1].Value));
    }

    /// <summary>The free counts summed over dumpe2fs's group lines (what e2fsck checks strictly; the kernel keeps the superblock's copy only roughly).</summary>
    private static (long Blocks, long Inodes) GroupFreeSums(string image)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("dumpe2fs"), [image]);
        Assert.True(rc == 0, output);
        var groups = Regex.Matches(output, @"^\s+(\d+) free (?:blocks|clusters), (\d+) free inodes", RegexOptions.Multiline);
        Assert.NotEmpty(groups);
        return (groups.Sum(m => long.Parse(m.Groups[1].Value)), groups.Sum(m => long.Parse(m.Groups[2].Value)));
    }

    private static uint FirstOrphan(string header) =>
        Regex.Match(header, @"First orphan inode:\s+(\d+)") is { Success: true } m ? uint.Parse(m.Groups[1].Value) : 0;

    private static bool OrphanPresent(string header) =>
        Regex.Match(header, @"features:.*\borphan_present\b") .Success;

    private static void AssertFsckClean(string image, string what)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
        Assert.True(rc == 0, $"{what}: e2fsck -fn\n{output}");
    }

    private static string Save(Scratch s, string name, byte[] bytes)
    {
        var path = s.File(name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    /// <summary>
    /// The image as e2fsprogs sees it once its journal is replayed (debugfs's journal_run; e2fsck
    /// would also process the orphans): while an image is open, committed metadata
    /// may still sit in the journal only (the lazy checkpoint), as on a mounted ext4.
    /// </summary>
    private static string Replayed(Scratch s, string name, byte[] bytes)
    {
        var path = Save(s, name, bytes);
        var (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-w", "-R", "journal_run", path]);
        Assert.True(rc == 0 && !output.Contains("error", StringComparison.OrdinalIgnoreCase), output);
        return path;
    }

    // Opens (so recovery runs) and closes the image in untorn.
    private static void RecoverWithUntorn(byte[] image)
    {
        using var fs = Ext4Fs.Open(new MemoryBlockDevice(image), NoTimer);
    }

    /// <summary>Creates and fills the files, then unlinks them while open and commits; returns their inodes, the device and the still-open fs.</summary>
    private static (Ext4Fs Fs, MemoryBlockDevice Dev, Dictionary<string, (int Fd, uint Ino)> Files) UnlinkWhileOpen(byte[] baseImage, string[] names, int bytes)
    {
        var dev = new MemoryBlockDevice(baseImage.ToArray());
        var fs = Ext4Fs.Open(dev, NoTimer);
        var files = new Dictionary<string, (int, uint)>();
        var rng = new Random(names.Length);
        foreach (var n in names)
        {
            int fd = fs.Open(B(n), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4);
            var data = new byte[bytes];
            rng.NextBytes(data);
            fs.Pwrite(fd, data, 0);
            files[n] = (fd, (uint)fs.Statx(AtFlags.Root, B(n), 0, StatxMask.BasicStats).Ino);
        }
        fs.Sync();
        foreach (var n in names) fs.Unlink(B(n));
        fs.Sync();
        return (fs, dev, files);
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void UnlinkWhileOpen_Crash_UntornE2fsckAndKernelAllFreeTheSpace(string mkfs)
    {
        using var s = new Scratch();
        var baseImage = MakeImage(s, mkfs);
        var original = FreeCounts(s.File("base.img"));
        var (fs, dev, files) = UnlinkWhileOpen(baseImage, ["/victim"], 3 << 20);
        uint ino = files["/victim"].Ino;
        var crashed = dev.Image.ToArray(); // the crash: the descriptor is still open
        fs.Dispose();

        // The record is on disk (in the journal at least) where e2fsprogs looks for it.
        var crashedPath = Replayed(s, "crashed.img", crashed);
        var header = Header(crashedPath);
        if (UsesOrphanFile(mkfs))
        {
            Assert.True(OrphanPresent(header), "orphan_present missing after the unlink committed:\n" + header);
            Assert.Equal(0u, FirstOrphan(header));
        }
        else Assert.Equal(ino, FirstOrphan(header));
        Assert.True(FreeCounts(crashedPath).Blocks < original.Blocks - 700, "the crashed image should still hold the file's 3 MiB");

        // (a) untorn's recovery at a read-write open.
        var byUntorn = crashed.ToArray();
        RecoverWithUntorn(byUntorn);
        var untornPath = Save(s, "untorn.img", byUntorn);
        AssertFsckClean(untornPath, "after untorn's orphan recovery");
        Assert.Equal(original, FreeCounts(untornPath));
        var after = Header(untornPath);
        Assert.Equal(0u, FirstOrphan(after));
        Assert.False(OrphanPresent(after), after);

        // (b) e2fsck -fy on the same crashed image finds the orphan through the record and frees it.
        var fsckPath = Save(s, "e2fsck.img", crashed);
        var (_, fixedOutput) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", fsckPath]);
        Assert.Contains($"orphaned inode {ino} ", fixedOutput);
        AssertFsckClean(fsckPath, "after e2fsck -fy");
        Assert.Equal(FreeCounts(fsckPath), FreeCounts(untornPath));

        // ... and the kernel processes it at mount.
        var kernelPath = Save(s, "kernel.img", crashed);
        if (KernelMountUnmount(s, kernelPath) is { } skip) Assert.Skip(skip);
        AssertFsckClean(kernelPath, "after the kernel's mount");
        Assert.Equal(FreeCounts(kernelPath), FreeCounts(untornPath));
    }

    // Mounts read-write (journal replay, orphan cleanup) and unmounts; a reason to skip, or null.
    private static string? KernelMountUnmount(Scratch s, string image)
    {
        if (Environment.UserName != "root") return "needs root for mount -o loop";
        var mnt = s.File("mnt");
        Directory.CreateDirectory(mnt);
        var probe = Save(s, "probe.img", File.ReadAllBytes(s.File("base.img")));
        var (rc, output) = Tools.Run("mount", ["-o", "loop,ro", probe, mnt]);
        if (rc != 0) return "mount -o loop does not work here: " + output.Trim();
        Oracles.Umount(mnt);
        (rc, output) = Tools.Run("mount", ["-o", "loop", image, mnt]);
        Assert.True(rc == 0, "the kernel refused the crashed image: " + output);
        (rc, output) = Oracles.Umount(mnt);
        Assert.True(rc == 0, output);
        return null;
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void UnlinkWhileOpen_CleanClose_LeavesNoOrphan(string mkfs)
    {
        using var s = new Scratch();
        var baseImage = MakeImage(s, mkfs);
        var original = FreeCounts(s.File("base.img"));
        var (fs, dev, files) = UnlinkWhileOpen(baseImage, ["/a", "/b"], 100_000);
        Assert.Equal(files.Values.Select(f => f.Ino).Order(), fs.PendingOrphans.Order());
        fs.Close(files["/a"].Fd); // freed at its last close; /b is still open when the image closes
        Assert.Equal([files["/b"].Ino], fs.PendingOrphans);
        fs.Dispose();
        var path = Save(s, "closed.img", dev.Image);
        var header = Header(path);
        Assert.Equal(0u, FirstOrphan(header));
        Assert.False(OrphanPresent(header), header);
        Assert.DoesNotContain("needs_recovery", header);
        AssertFsckClean(path, "after a clean close");
        Assert.Equal(original, FreeCounts(path));
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void SeveralOrphans_MiddleOnesClosed_RecordHoldsExactlyTheOpenOnes(string mkfs)
    {
        using var s = new Scratch();
        var baseImage = MakeImage(s, mkfs);
        var original = FreeCounts(s.File("base.img"));
        string[] names = ["/o1", "/o2", "/o3", "/o4", "/o5", "/o6"];
        var (fs, dev, files) = UnlinkWhileOpen(baseImage, names, 40_000);
        // A rename over an open file orphans it too.
        int kept = fs.Open(B("/kept"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
        fs.Pwrite(kept, new byte[50_000], 0);
        int src = fs.Open(B("/src"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
        fs.Close(src);
        fs.Rename(B("/src"), B("/kept"));
        // rmdir of an open directory orphans it as well.
        fs.Mkdir(B("/dir"), 0x1ED);
        int dirFd = fs.Open(B("/dir"), OpenFlags.RdOnly | OpenFlags.Directory, 0);
        fs.Rmdir(B("/dir"));
        uint dirIno = (uint)fs.Statx(dirFd, [], AtFlags.EmptyPath, StatxMask.BasicStats).Ino;
        // Close the head, a middle entry and the tail of the list (unlinked o1..o6: o6 is the head).
        foreach (var n in new[] { "/o6", "/o3", "/o1" }) fs.Close(files[n].Fd);
        fs.Sync();
        var crashed = dev.Image.ToArray();
        fs.Dispose();

        var open = new[] { "/o2", "/o4", "/o5" }.Select(n => files[n].Ino).ToList();
        var fsckPath = Save(s, "e2fsck.img", crashed);
        var (_, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", fsckPath]);
        var cleared = Regex.Matches(output, @"orphaned inode (\d+) ").Select(m => uint.Parse(m.Groups[1].Value)).ToList();
        Assert.Equal(5, cleared.Count); // the three still open, the renamed-over /kept and /dir
        open.Add(dirIno);
        Assert.Subset(cleared.ToHashSet(), open.ToHashSet());
        AssertFsckClean(fsckPath, "after e2fsck -fy");

        var byUntorn = crashed.ToArray();
        RecoverWithUntorn(byUntorn);
        var untornPath = Save(s, "untorn.img", byUntorn);
        AssertFsckClean(untornPath, "after untorn's recovery");
        Assert.Equal(FreeCounts(fsckPath), FreeCounts(untornPath));
        Assert.Equal(original.Inodes - 1, FreeCounts(untornPath).Inodes); // only /src's inode, now named /kept, remains
    }

    [Fact]
    public void UnlinkedOpenFile_LinkByOldName_ENOENT_AndSecondNameMakesNoOrphan()
    {
        using var s = new Scratch();
        var baseImage = MakeImage(s, "-b 4096");
        var (fs, dev, files) = UnlinkWhileOpen(baseImage, ["/gone"], 10_000);
        // Linux: a file without links cannot get a name back (linkat says ENOENT); by path it has none.
        Assert.Equal(Errno.ENOENT, Assert.Throws<Ext4Exception>(() => fs.Link(B("/gone"), B("/back"))).Errno);
        int fd = fs.Open(B("/two"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
        fs.Link(B("/two"), B("/alias"));
        fs.Unlink(B("/two")); // one link left: not an orphan
        fs.Sync();
        Assert.Equal([files["/gone"].Ino], fs.PendingOrphans);
        var header = Header(Replayed(s, "mid.img", dev.Image));
        Assert.Equal(files["/gone"].Ino, FirstOrphan(header));
        fs.Close(fd);
        fs.Close(files["/gone"].Fd);
        fs.Sync();
        Assert.Equal(0u, FirstOrphan(Header(Replayed(s, "after.img", dev.Image))));
        fs.Dispose();
    }

    [Fact]
    public void ReadOnlyOpen_CrashedOrphan_ImageUntouched()
    {
        using var s = new Scratch();
        var baseImage = MakeImage(s, "-b 4096");
        var (fs, dev, files) = UnlinkWhileOpen(baseImage, ["/victim"], 200_000);
        var crashed = dev.Image.ToArray();
        fs.Dispose();
        var copy = crashed.ToArray();
        using (var ro = Ext4Fs.Open(new MemoryBlockDevice(copy, readOnly: true), new OpenOptions { ReadOnly = true }))
        {
            Assert.Equal(Errno.ENOENT, Assert.Throws<Ext4Exception>(() => ro.Open(B("/victim"), OpenFlags.RdOnly, 0)).Errno);
            Assert.Equal(0, ro.ReadInode(files["/victim"].Ino).LinksCount);
        }
        Assert.True(copy.AsSpan().SequenceEqual(crashed), "a read-only open changed the image");
    }

    /// <summary>
    /// A linked orphan (a truncate the kernel did not finish: blocks past i_size, the inode on the
    /// list), made with debugfs. untorn, e2fsck -fy and the kernel must cut it to i_size alike: the
    /// same free counts, extent map and bytes of the partial last block (zeroed past i_size).
    /// </summary>
    [Theory]
    [InlineData("-b 4096")]
    [InlineData("-b 1024")]
    [InlineData("-b 4096 -O bigalloc -C 16384")]
    public void LinkedOrphan_BlocksPastSize_TruncatedLikeE2fsckAndKernel(string mkfs)
    {
        using var s = new Scratch();
        var tree = s.File("tree");
        Directory.CreateDirectory(tree);
        var data = new byte[600_000];
        new Random(7).NextBytes(data);
        File.WriteAllBytes(Path.Combine(tree, "big"), data);
        var basePath = s.File("base.img");
        using (var fh = File.Create(basePath)) fh.SetLength(32 << 20);
        var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", "-t", "ext4", .. mkfs.Split(' '), "-d", tree, basePath]);
        Assert.True(rc == 0, output);
        uint ino;
        using (var ro = Ext4Fs.Open(basePath, new OpenOptions { ReadOnly = true }))
            ino = (uint)ro.Statx(AtFlags.Root, B("/big"), 0, StatxMask.BasicStats).Ino;
        const int newSize = 123_457; // mid-block for both block sizes
        var cmds = s.File("cmds");
        File.WriteAllText(cmds, $"sif /big size {newSize}\nssv last_orphan {ino}\n");
        (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-w", "-f", cmds, basePath]);
        Assert.True(rc == 0, output);
        Assert.Equal(ino, FirstOrphan(Header(basePath)));
        var crashed = File.ReadAllBytes(basePath);

        var byUntorn = crashed.ToArray();
        RecoverWithUntorn(byUntorn);
        var untornPath = Save(s, "untorn.img", byUntorn);
        AssertFsckClean(untornPath, "after untorn's truncate recovery");
        Assert.Equal(0u, FirstOrphan(Header(untornPath)));

        var fsckPath = Save(s, "e2fsck.img", crashed);
        (_, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", fsckPath]);
        Assert.Contains($"Truncating orphaned inode {ino} ", output);
        AssertFsckClean(fsckPath, "after e2fsck -fy");
        if (mkfs.Contains("bigalloc"))
        {
            // e2fsck 1.47's orphan truncate on bigalloc leaves extents past the new end, which its
            // own pass 1 then clears with the whole inode: only the kernel is an oracle here.
            TestContext.Current.SendDiagnosticMessage($"{mkfs}: compared with the kernel only (e2fsck -fy said:\n{output})");
        }
        else
        {
            Assert.Equal(FreeCounts(fsckPath), FreeCounts(untornPath));
            // e2fsck zeroes the tail of the block at index ceil(size / bs), which it then frees, so the
            // partial block keeps its stale bytes there; the kernel zeroes them (ext4_block_truncate_page),
            // so only the extent map is compared with e2fsck and the block itself with the kernel.
            Assert.Equal(FileShape(fsckPath, newSize, mkfs).Extents, FileShape(untornPath, newSize, mkfs).Extents);
        }
        using (var fs = Ext4Fs.Open(untornPath, new OpenOptions { ReadOnly = true }))
        {
            var got = new byte[newSize + 10];
            int fd = fs.Open(B("/big"), OpenFlags.RdOnly, 0);
            Assert.Equal(newSize, fs.Pread(fd, got, 0));
            Assert.True(got.AsSpan(0, newSize).SequenceEqual(data.AsSpan(0, newSize)));
        }

        var kernelPath = Save(s, "kernel.img", crashed);
        if (KernelMountUnmount(s, kernelPath) is { } skip) Assert.Skip(skip);
        AssertFsckClean(kernelPath, "after the kernel's mount");
        Assert.Equal(FreeCounts(kernelPath), FreeCounts(untornPath));
        Assert.Equal(FileShape(kernelPath, newSize, mkfs), FileShape(untornPath, newSize, mkfs));
    }

    // debugfs's view of /big: its extents and the hex of its last (partial) block.
    private static (string Extents, string LastBlock) FileShape(string image, int size, string mkfs)
    {
        int bs = mkfs.Contains("1024") ? 1024 : 4096;
        var debugfs = Tools.RequireTool("debugfs");
        var (_, extents) = Tools.Run(debugfs, ["-R", "ex /big", image]);
        var (_, last) = Tools.Run(debugfs, ["-R", $"bd -f /big {size / bs}", image]);
        Assert.Contains("0000", last);
        Assert.Contains("Logical", extents);
        return (Regex.Replace(extents, @"^debugfs .*\n", ""), Regex.Replace(last, @"^debugfs .*\n", ""));
    }

    /// <summary>
    /// Every prefix of the device writes of an unlink-while-open workload (creates, writes, unlinks
    /// and a rename over open files, closes in between, fsyncs, a final close of the image) is a
    /// possible crash state; each, opened by untorn, must come out e2fsck-clean with no orphan left,
    /// and at each flush untorn's free counts must equal e2fsck -fy's on the same state.
    /// </summary>
    [Theory]
    [InlineData("-b 4096")]
    [InlineData("-b 1024 -O orphan_file")]
    public void UnlinkWhileOpenWorkload_EveryCrashState_RecoversClean(string mkfs)
    {
        using var s = new Scratch();
        var baseImage = MakeImage(s, mkfs, megabytes: 16);
        var rec = new RecordingBlockDevice(baseImage.ToArray());
        using (var fs = Ext4Fs.Open(rec, NoTimer))
        {
            var fds = new Dictionary<string, int>();
            foreach (var n in new[] { "/a", "/b", "/c", "/d" })
            {
                fds[n] = fs.Open(B(n), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
                fs.Pwrite(fds[n], new byte[30_000 + n[1] * 100], 0);
            }
            fs.Fsync(fds["/a"]);
            fs.Unlink(B("/a"));
            fs.Unlink(B("/b"));
            fs.Fsync(fds["/c"]);
            fs.Pwrite(fds["/a"], new byte[20_000], 30_000); // the orphan still grows
            fs.Rename(B("/c"), B("/d")); // /d's inode is orphaned while open
            fs.Close(fds["/b"]);
            fs.Fsync(fds["/a"]);
            fs.Unlink(B("/d"));
            fs.Close(fds["/c"]); // its last close: freed
            fs.Sync();
        } // /a and /d's old inode are freed by the image close

        int writes = 0, states = 0;
        var image = baseImage.ToArray();
        var path = s.File("state.img");
        void Check(bool atFlush)
        {
            var recovered = image.ToArray();
            RecoverWithUntorn(recovered);
            File.WriteAllBytes(path, recovered);
            var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", path]);
            Assert.True(rc == 0, $"after {writes} writes, recovered by untorn:\n{output}");
            var header = Header(path);
            Assert.True(FirstOrphan(header) == 0 && !OrphanPresent(header), $"after {writes} writes an orphan record is left:\n{header}");
            states++;
            if (!atFlush) return;
            var untornCounts = FreeCounts(path);
            File.WriteAllBytes(path, image);
            Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", path]);
            Assert.Equal(FreeCounts(path), untornCounts);
        }
        Check(atFlush: true);
        foreach (var op in rec.Ops)
        {
            if (op.Data == null) { Check(atFlush: true); continue; }
            op.Data.CopyTo(image.AsSpan((int)op.Offset));
            writes++;
            Check(atFlush: false);
        }
        Assert.True(writes > 30, $"only {writes} device writes");
        TestContext.Current.SendDiagnosticMessage($"{mkfs}: {states} crash states ({writes} device writes) recovered clean");
    }

    /// <summary>
    /// An orphan whose blocks untorn cannot free yet (indirect-mapped, made with mke2fs -O ^extents
    /// and debugfs): the read-write open fails with EOPNOTSUPP before writing anything; read-only
    /// opens still work, and e2fsck -fy finishes the orphan.
    /// </summary>
    [Fact]
    public void IndirectMappedOrphan_ReadWriteOpen_EOPNOTSUPPAndImageUntouched()
    {
        using var s = new Scratch();
        var tree = s.File("tree");
        Directory.CreateDirectory(tree);
        var bytes = new byte[100_000];
        new Random(3).NextBytes(bytes); // not zeros: mke2fs -d would leave holes
        File.WriteAllBytes(Path.Combine(tree, "old"), bytes);
        var path = s.File("base.img");
        using (var fh = File.Create(path)) fh.SetLength(16 << 20);
        var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", "-t", "ext4", "-O", "^extents,^64bit", "-d", tree, path]);
        Assert.True(rc == 0, output);
        uint ino;
        using (var ro = Ext4Fs.Open(path, new OpenOptions { ReadOnly = true }))
            ino = (uint)ro.Statx(AtFlags.Root, B("/old"), 0, StatxMask.BasicStats).Ino;
        var cmds = s.File("cmds");
        File.WriteAllText(cmds, $"unlink /old\nsif <{ino}> links_count 0\nssv last_orphan {ino}\n");
        (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-w", "-f", cmds, path]);
        Assert.True(rc == 0, output);
        var before = File.ReadAllBytes(path);
        Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<Ext4Exception>(() => Ext4Fs.Open(path)).Errno);
        Assert.True(File.ReadAllBytes(path).AsSpan().SequenceEqual(before), "a refused open changed the image");
        using (var ro = Ext4Fs.Open(path, new OpenOptions { ReadOnly = true }))
            Assert.Equal(0, ro.ReadInode(ino).LinksCount);
        (_, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", path]);
        Assert.Contains($"Clearing orphaned inode {ino} ", output);
        AssertFsckClean(path, "after e2fsck -fy");
    }

    /// <summary>Without a journal ext4_orphan_add records nothing (a crash there needs e2fsck anyway); untorn does the same.</summary>
    [Fact]
    public void NoJournal_UnlinkWhileOpen_NoRecordButFreedAtClose()
    {
        using var s = new Scratch();
        var baseImage = MakeImage(s, "-b 4096 -O ^has_journal");
        var original = FreeCounts(s.File("base.img"));
        var (fs, dev, files) = UnlinkWhileOpen(baseImage, ["/x"], 50_000);
        Assert.Equal(0u, FirstOrphan(Header(Save(s, "mid.img", dev.Image))));
        Assert.Equal([files["/x"].Ino], fs.PendingOrphans);
        fs.Close(files["/x"].Fd);
        fs.Dispose();
        var path = Save(s, "closed.img", dev.Image);
        AssertFsckClean(path, "after the last close");
        Assert.Equal(original, FreeCounts(path));
    }

    /// <summary>
    /// Orphans the kernel leaves: as root, a loop mount where a file held open by this process is
    /// unlinked, the journal flushed and the filesystem shut down (EXT4_IOC_SHUTDOWN via xfs_io)
    /// before the descriptor closes. untorn must read the kernel's record (list, or orphan-file
    /// block with the kernel's checksum), replay the log and free the file: e2fsck-clean, with the
    /// free counts e2fsck -fy leaves on a copy.
    /// </summary>
    [Theory]
    [InlineData("-b 4096")]
    [InlineData("-b 1024")]
    [InlineData("-b 4096 -O orphan_file")]
    [InlineData("-b 1024 -O orphan_file")]
    public void KernelLeftOrphan_UntornRecoveryEqualsE2fsck(string mkfs)
    {
        if (Environment.UserName != "root") Assert.Skip("needs root for mount -o loop");
        var xfsIo = Tools.Which("xfs_io");
        if (xfsIo == null) Assert.Skip("xfs_io is not installed (apt-get install xfsprogs)");
        using var s = new Scratch();
        MakeImage(s, mkfs);
        var image = s.File("base.img");
        var original = FreeCounts(image);
        var mnt = s.File("mnt");
        Directory.CreateDirectory(mnt);
        var (rc, output) = Tools.Run("mount", ["-o", "loop", image, mnt]);
        if (rc != 0) Assert.Skip("mount -o loop does not work here: " + output.Trim());
        try
        {
            var file = Path.Combine(mnt, "held");
            var data = new byte[2 << 20];
            new Random(5).NextBytes(data);
            using var held = new FileStream(file, FileMode.CreateNew, FileAccess.ReadWrite);
            held.Write(data);
            held.Flush(flushToDisk: true);
            File.Delete(file);
            Tools.Run("sync", ["-f", mnt]);
            (rc, output) = Tools.Run(xfsIo, ["-x", "-c", "shutdown -f", mnt]);
            Assert.True(rc == 0, output);
        } // the descriptor closes after the shutdown: the kernel cannot free the file any more
        finally { Oracles.Umount(mnt); }
        var header = Header(image);
        var crashed = File.ReadAllBytes(image);

        var fsckPath = Save(s, "e2fsck.img", crashed);
        (_, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", fsckPath]);
        Assert.Matches(@"Clearing orphaned inode \d+ ", output);
        AssertFsckClean(fsckPath, "after e2fsck -fy");

        var byUntorn = crashed.ToArray();
        RecoverWithUntorn(byUntorn);
        var untornPath = Save(s, "untorn.img", byUntorn);
        AssertFsckClean(untornPath, $"after untorn's recovery of the kernel's orphan (image header before:\n{header})");
        Assert.Equal(GroupFreeSums(fsckPath), GroupFreeSums(untornPath));
        Assert.Equal(original, GroupFreeSums(untornPath));
        // The kernel does not keep the superblock's free counts current while mounted (it sums the
        // group descriptors at mount); untorn seeds its counts the same way, so its superblock
        // copy is exact again after the recovery, as e2fsck -fy makes it.
        Assert.Equal(FreeCounts(fsckPath), FreeCounts(untornPath));
        Assert.Equal(GroupFreeSums(untornPath), FreeCounts(untornPath));
        var after = Header(untornPath);
        Assert.True(FirstOrphan(after) == 0 && !OrphanPresent(after), after);
    }

    /// <summary>
    /// A full orphan file (one 1 KiB block: 254 entries) spills into the list, as ext4_orphan_add
    /// falls back: 260 open unlinked files are all found by e2fsck -fy and freed alike by untorn;
    /// closing them instead empties both records.
    /// </summary>
    [Fact]
    public void OrphanFileFull_SpillsIntoList_AllRecovered()
    {
        using var s = new Scratch();
        // ^dir_index: else e2fsck -fy also indexes the 260-name root (pass 3A), freeing blocks of its own.
        var baseImage = MakeImage(s, "-b 1024 -O orphan_file,^dir_index -E orphan_file_size=1");
        var original = FreeCounts(s.File("base.img"));
        var names = Enumerable.Range(0, 260).Select(i => $"/f{i}").ToArray();
        var (fs, dev, files) = UnlinkWhileOpen(baseImage, names, 1500);
        var crashed = dev.Image.ToArray();
        var header = Header(Replayed(s, "crashed.img", crashed));
        Assert.True(OrphanPresent(header) && FirstOrphan(header) != 0, header);

        var fsckPath = Save(s, "e2fsck.img", crashed);
        var (_, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fy", fsckPath]);
        var cleared = Regex.Matches(output, @"Clearing orphaned inode (\d+) ").Select(m => uint.Parse(m.Groups[1].Value)).ToHashSet();
        Assert.True(cleared.SetEquals(files.Values.Select(f => f.Ino)), $"e2fsck cleared {cleared.Count} of {files.Count}");
        AssertFsckClean(fsckPath, "after e2fsck -fy");
        var byUntorn = crashed.ToArray();
        RecoverWithUntorn(byUntorn);
        var untornPath = Save(s, "untorn.img", byUntorn);
        AssertFsckClean(untornPath, "after untorn's recovery");
        Assert.Equal(original.Inodes, FreeCounts(untornPath).Inodes); // (the root directory keeps the blocks its 260 names took)
        Assert.Equal(FreeCounts(fsckPath), FreeCounts(untornPath));

        foreach (var n in names) fs.Close(files[n].Fd); // the normal path: every last close
        fs.Sync();
        var closed = Replayed(s, "closed.img", dev.Image);
        var after = Header(closed);
        Assert.True(FirstOrphan(after) == 0 && !OrphanPresent(after), after);
        fs.Dispose();
        AssertFsckClean(closed, "after every last close");
    }

    /// <summary>
    /// Unlink racing with the file's last close, on two threads: whichever wins, the file is freed
    /// once both return (nothing waits for the image close), and the result is e2fsck-clean.
    /// </summary>
    [Fact]
    public async Task UnlinkRacingLastClose_FileFreedEitherWay()
    {
        using var s = new Scratch();
        var baseImage = MakeImage(s, "-b 4096");
        var original = FreeCounts(s.File("base.img"));
        var dev = new MemoryBlockDevice(baseImage.ToArray());
        using (var fs = Ext4Fs.Open(dev, NoTimer))
        {
            for (int i = 0; i < 200; i++)
            {
                var name = B($"/race{i}");
                int fd = fs.Open(name, OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
                fs.Pwrite(fd, new byte[5000], 0);
                using var start = new Barrier(2);
                var ct = TestContext.Current.CancellationToken;
                var closer = Task.Run(() => { start.SignalAndWait(ct); fs.Close(fd); }, ct);
                var unlinker = Task.Run(() => { start.SignalAndWait(ct); fs.Unlink(name); }, ct);
                await Task.WhenAll(closer, unlinker);
                Assert.Empty(fs.PendingOrphans);
            }
        }
        var path = Save(s, "raced.img", dev.Image);
        AssertFsckClean(path, "after racing unlinks and closes");
        Assert.Equal(original, FreeCounts(path));
    }
}
