using System.Text;

namespace Untorn.Tests;

/// <summary>
/// fdatasync as ext4 does it: an overwrite of blocks the committed metadata already maps needs only
/// a device flush (the changed timestamps wait for the next commit); anything a reader of the data
/// needs (size, extents, allocation) is committed. Each durable state is the recorded device
/// contents at the call's last flush, recovered by untorn and judged by e2fsck.
/// </summary>
public class FsyncTests
{
    private static readonly byte[] Name = "/datasync"u8.ToArray();

    private static (RecordingBlockDevice Rec, byte[] Image) Recorded()
    {
        TestImages.Require();
        var path = TestImages.CopyOf("ext4-4k");
        try
        {
            var image = File.ReadAllBytes(path);
            return (new RecordingBlockDevice(image), image);
        }
        finally { File.Delete(path); }
    }

    private static byte[] Pattern(int n, int seed)
    {
        var b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    // The image as a crash right now leaves it (everything recorded precedes the last flush), recovered and checked.
    private static byte[] RecoveredCopy(byte[] image, int length)
    {
        var copy = image.ToArray();
        using (Ext4Fs.Open(new MemoryBlockDevice(copy), new OpenOptions { CommitInterval = TimeSpan.Zero })) { }
        var file = Path.Combine(Path.GetTempPath(), $"untorn-fsync-{Guid.NewGuid():N}.img");
        try
        {
            File.WriteAllBytes(file, copy);
            var (code, fsck) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", file]);
            Assert.True(code == 0, $"e2fsck -fn after recovery:\n{fsck}");
        }
        finally { File.Delete(file); }
        using var ro = Ext4Fs.Open(new MemoryBlockDevice(copy, readOnly: true), new OpenOptions { ReadOnly = true });
        int fd = ro.Open(Name, OpenFlags.RdOnly, 0);
        var got = new byte[length];
        Assert.Equal(length, ro.Pread(fd, got, 0));
        Assert.Equal((ulong)length, ro.Statx(AtFlags.Root, Name, 0, StatxMask.BasicStats).Size);
        return got;
    }

    [Fact]
    public void Fdatasync_OverwriteOfMappedBlocks_OneFlushNoJournalWrite()
    {
        var (rec, image) = Recorded();
        using var fs = Ext4Fs.Open(rec, new OpenOptions { CommitInterval = TimeSpan.Zero });
        int fd = fs.Open(Name, OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
        fs.Pwrite(fd, Pattern(16384, 1), 0);
        fs.Fsync(fd);
        int before = rec.Ops.Count;
        var second = Pattern(16384, 2);
        fs.Pwrite(fd, second, 0);
        fs.Fdatasync(fd);
        var ops = rec.Ops.Skip(before).ToList();
        Assert.Equal(1, ops.Count(o => o.Data == null));
        Assert.Null(ops[^1].Data);
        // Only the file's data went to the device: one 16 KiB write where the file's blocks are.
        var data = Assert.Single(ops, o => o.Data != null);
        Assert.Equal(second, data.Data);
        Assert.Equal(second, RecoveredCopy(image, 16384));
        fs.Close(fd);
    }

    [Fact]
    public void Fdatasync_AppendGrowingTheFile_CommitsSizeAndExtent()
    {
        var (rec, image) = Recorded();
        using var fs = Ext4Fs.Open(rec, new OpenOptions { CommitInterval = TimeSpan.Zero });
        int fd = fs.Open(Name, OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
        var first = Pattern(8192, 3);
        fs.Pwrite(fd, first, 0);
        fs.Fsync(fd);
        int before = rec.Ops.Count;
        var more = Pattern(12288, 4);
        fs.Pwrite(fd, more, 8192);
        fs.Fdatasync(fd);
        Assert.True(rec.Ops.Skip(before).Count(o => o.Data == null) >= 2, "an append's fdatasync must commit (log, flush, commit record, flush)");
        Assert.Equal(first.Concat(more).ToArray(), RecoveredCopy(image, 8192 + 12288));
        fs.Close(fd);
    }

    [Fact]
    public void Fdatasync_OtherMetadataPending_Commits()
    {
        var (rec, image) = Recorded();
        using var fs = Ext4Fs.Open(rec, new OpenOptions { CommitInterval = TimeSpan.Zero });
        int fd = fs.Open(Name, OpenFlags.RdWr | OpenFlags.Creat, 0x1A4);
        var data = Pattern(4096, 5);
        fs.Pwrite(fd, data, 0);
        fs.Fsync(fd);
        fs.Mkdir("/made-before-fdatasync"u8, 0x1ED); // not this file's, but fdatasync may not split a transaction
        fs.Pwrite(fd, data, 0);
        fs.Fdatasync(fd);
        Assert.Equal(data, RecoveredCopy(image, 4096));
        using var ro = Ext4Fs.Open(new MemoryBlockDevice(image.ToArray(), readOnly: true), new OpenOptions { ReadOnly = true });
        Assert.True(ro.Statx(AtFlags.Root, "/made-before-fdatasync"u8, 0, StatxMask.BasicStats).Size > 0);
        fs.Close(fd);
    }
}
