using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// Inline data (INLINE_DATA_FL): the first 60 bytes live in i_block, the rest in the in-inode
/// extended attribute "system.data" (name index 7). Directories keep the parent's inode number in
/// the first 4 bytes of i_block and their entries after it.
/// </summary>
internal static class Inline
{
    private const uint XattrMagic = 0xEA020000;
    private const byte SystemIndex = 7;
    private const int EntryHeader = 16;

    /// <summary>The file's inline bytes: i_block followed by the system.data value.</summary>
    public static byte[] Read(Inode inode)
    {
        var extra = FindSystemData(inode);
        var all = new byte[Inode.BlockArraySize + extra.Length];
        inode.BlockArray.CopyTo(all);
        extra.CopyTo(all.AsSpan(Inode.BlockArraySize));
        return all;
    }

    private static ReadOnlySpan<byte> FindSystemData(Inode inode)
    {
        var raw = inode.Raw;
        int start = Inode.GoodOldSize + inode.ExtraIsize;
        if (raw.Length <= Inode.GoodOldSize || start + 4 > raw.Length) return [];
        if (BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(start)) != XattrMagic) return [];
        int first = start + 4, pos = first;
        while (pos + 4 <= raw.Length && BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(pos)) != 0)
        {
            if (pos + EntryHeader > raw.Length) throw Corrupt(inode, "xattr entry past the inode");
            int nameLen = raw[pos];
            byte index = raw[pos + 1];
            int valueOffs = BinaryPrimitives.ReadUInt16LittleEndian(raw.AsSpan(pos + 2));
            uint valueInum = BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(pos + 4));
            int valueSize = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(pos + 8)), int.MaxValue);
            if (pos + EntryHeader + nameLen > raw.Length) throw Corrupt(inode, "xattr name past the inode");
            var name = raw.AsSpan(pos + EntryHeader, nameLen);
            if (index == SystemIndex && name.SequenceEqual("data"u8))
            {
                if (valueInum != 0) throw Corrupt(inode, "system.data stored in an EA inode");
                if (valueSize == 0) return [];
                if ((long)first + valueOffs + valueSize > raw.Length) throw Corrupt(inode, "system.data value past the inode");
                return raw.AsSpan(first + valueOffs, valueSize);
            }
            pos += (EntryHeader + nameLen + 3) & ~3;
        }
        return [];
    }

    private static Ext4Exception Corrupt(Inode inode, string what) => Ext4Exception.Corrupted($"inode {inode.Number}: inline data: {what}");
}
