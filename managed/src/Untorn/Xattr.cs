using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Extended-attribute lookup (fs/ext4/xattr.c), read side only: whether an inode carries a given
/// attribute, in the inode body after i_extra_isize or in the block at i_file_acl. setattr needs
/// it to know when the kernel would also rewrite an attribute (a POSIX ACL on chmod, the file
/// capability on chown), which untorn does not do.
/// </summary>
internal static class Xattr
{
    private const uint Magic = 0xEA020000;
    private const int EntryHeader = 16, BlockHeader = 32;

    /// <summary>Name indexes of the on-disk entries (the prefix each stands for).</summary>
    public const byte PosixAclAccess = 2, PosixAclDefault = 3, Security = 6;

    /// <summary>Whether the inode has the attribute <paramref name="index"/>:<paramref name="name"/>.</summary>
    public static bool Has(Ext4Fs fs, Inode inode, byte index, ReadOnlySpan<byte> name)
    {
        var raw = inode.Raw;
        int start = Inode.GoodOldSize + inode.ExtraIsize;
        if (raw.Length > Inode.GoodOldSize && start + 4 <= raw.Length
            && BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(start)) == Magic
            && Scan(raw.AsSpan(start + 4), index, name, inode.Number))
            return true;
        if (inode.FileAcl == 0) return false;
        if (inode.FileAcl >= fs.Super.BlocksCount) throw Ext4Exception.Corrupted($"inode {inode.Number}: xattr block {inode.FileAcl} beyond the filesystem");
        var block = fs.ReadBlock(inode.FileAcl);
        if (BinaryPrimitives.ReadUInt32LittleEndian(block) != Magic) throw Ext4Exception.Corrupted($"inode {inode.Number}: bad xattr block magic");
        return Scan(block.AsSpan(BlockHeader), index, name, inode.Number);
    }

    // Entries follow one another, each padded to 4 bytes; four zero bytes end the list.
    private static bool Scan(ReadOnlySpan<byte> entries, byte index, ReadOnlySpan<byte> name, uint ino)
    {
        int pos = 0;
        while (pos + 4 <= entries.Length && BinaryPrimitives.ReadUInt32LittleEndian(entries[pos..]) != 0)
        {
            int nameLen = entries[pos];
            if (pos + EntryHeader + nameLen > entries.Length) throw Ext4Exception.Corrupted($"inode {ino}: xattr entry past its area");
            if (entries[pos + 1] == index && entries.Slice(pos + EntryHeader, nameLen).SequenceEqual(name)) return true;
            pos += (EntryHeader + nameLen + 3) & ~3;
        }
        return false;
    }
}
