namespace Untorn.Tests;

public partial class FileSpaceTests
{
    /// <summary>
    /// An extent may run across a block group boundary (flex_bg keeps the groups' metadata
    /// elsewhere). Freeing it must load the buddy of every group it touches before the bitmaps say
    /// free: a buddy first built from the freed, uncommitted bitmap would hand those clusters out
    /// before the commit, and the deferred free would then find them free already (EUCLEAN).
    /// </summary>
    [Fact]
    public void Truncate_ExtentAcrossGroups_FreedAfterCommitAndReusable()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"untorn-xgroup-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(dir, "tree"));
        try
        {
            var image = Path.Combine(dir, "x.img");
            using (var fh = File.Create(image)) fh.SetLength(64 << 20);
            // Small groups whose starts hold nothing (flex_bg keeps their metadata in group 0;
            // sparse_super2 keeps backups in groups 1 and 15 only), so runs may continue across.
            var (rc, output) = Tools.Run(Tools.RequireTool("mke2fs"), ["-q", "-F", "-t", "ext4", "-b", "4096", "-g", "1024", "-O", "sparse_super2", "-d", Path.Combine(dir, "tree"), image]);
            Assert.True(rc == 0, output);
            var data = new byte[12 << 20];
            new Random(11).NextBytes(data);
            using (var fs = Ext4Fs.Open(image, new OpenOptions { CommitInterval = TimeSpan.Zero }))
            {
                int fd = fs.Open(B("/big"), OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
                for (int off = 0; off < data.Length; off += 1 << 20) fs.Pwrite(fd, data.AsSpan(off, 1 << 20), off);
                fs.Close(fd);
            }
            const ulong blocksPerGroup = 1024;
            var crossing = DebugfsExtents(image, "/big").Where(e => e.P / blocksPerGroup != (e.P + e.N - 1) / blocksPerGroup).ToList();
            Assert.True(crossing.Count > 0, "no extent of /big crosses a group boundary; the test needs one");

            // A new open: no buddy is loaded yet when the truncate frees the crossing run.
            using (var fs = Ext4Fs.Open(image, new OpenOptions { CommitInterval = TimeSpan.Zero }))
            {
                int fd = fs.Open(B("/big"), OpenFlags.RdWr, 0);
                fs.Ftruncate(fd, 0);
                fs.Fsync(fd); // the deferred frees run here
                var fresh = new byte[data.Length];
                new Random(12).NextBytes(fresh);
                fs.Pwrite(fd, fresh, 0); // the freed clusters are allocatable again
                fs.Fsync(fd);
                fs.Close(fd);
            }
            AssertFsck(image, "after freeing and reusing an extent that crosses groups");
        }
        finally { Directory.Delete(dir, true); }
    }
}
