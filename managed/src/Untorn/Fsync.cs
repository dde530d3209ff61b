namespace Untorn;

// fdatasync (fs/ext4/fsync.c, ext4_sync_file with datasync): data written in place over blocks
// that committed metadata already maps needs only a device flush. The kernel tracks this with
// i_datasync_tid; here the running transaction is inspected instead: when its only change is this
// inode's timestamps, nothing in it is needed to read the data back, so it is left to the next
// commit (fsync, sync, the commit timer) and only the device is flushed.
public sealed partial class Ext4Fs
{
    /// <summary>fdatasync(2): the file's data and the metadata needed to read it are durable on return.</summary>
    public void Fdatasync(int fd)
    {
        uint ino = Files.Get(fd).Inode.Number;
        if (_write == null) return;
        long off = InodeOffset(ino);
        int bs = Super.BlockSize, at = (int)(off % bs);
        _write.Transactions.CommitUnlessOnly((ulong)(off / bs), (committed, running) => OnlyTimesDiffer(committed, running, at));
    }

    // Inode fields fdatasync need not commit: atime, ctime, mtime (0x08..0x13), their extra
    // nanosecond fields (0x84..0x8F) and the checksum halves (0x7C, 0x82) that cover them.
    private bool OnlyTimesDiffer(ReadOnlySpan<byte> committed, ReadOnlySpan<byte> running, int inodeAt)
    {
        int n = Super.InodeSize;
        if (!committed[..inodeAt].SequenceEqual(running[..inodeAt]) ||
            !committed[(inodeAt + n)..].SequenceEqual(running[(inodeAt + n)..])) return false;
        var a = committed.Slice(inodeAt, n);
        var b = running.Slice(inodeAt, n);
        for (int i = 0; i < n; i++)
        {
            if (a[i] == b[i]) continue;
            bool times = i is >= 0x08 and < 0x14 or >= 0x84 and < 0x90 or 0x7C or 0x7D or 0x82 or 0x83;
            if (!times) return false;
        }
        return true;
    }
}
