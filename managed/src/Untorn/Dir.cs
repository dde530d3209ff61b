using System.Buffers.Binary;

namespace Untorn;

/// <summary>A directory entry as readdir reports it. NextPos is the cookie of the entry after it.</summary>
public readonly record struct DirEntry(uint Inode, byte FileType, byte[] Name, long NextPos)
{
    public string NameString => System.Text.Encoding.UTF8.GetString(Name);
}

/// <summary>ext4_dir_entry_2 file_type values (equal to the DT_* values of readdir minus the mapping below).</summary>
public static class DirFileType
{
    public const byte Unknown = 0, Regular = 1, Dir = 2, CharDev = 3, BlockDev = 4, Fifo = 5, Socket = 6, Symlink = 7;

    /// <summary>EXT4_FT_* → DT_* (what getdents reports).</summary>
    public static byte ToDt(byte ft) => ft switch
    {
        Regular => 8, Dir => 4, CharDev => 2, BlockDev => 6, Fifo => 1, Socket => 12, Symlink => 10, _ => 0,
    };

    public static byte FromMode(ushort mode) => (ushort)(mode & InodeMode.TypeMask) switch
    {
        InodeMode.Regular => Regular, InodeMode.Dir => Dir, InodeMode.Char => CharDev, InodeMode.Block => BlockDev,
        InodeMode.Fifo => Fifo, InodeMode.Socket => Socket, InodeMode.Symlink => Symlink, _ => Unknown,
    };
}

/// <summary>
/// Walks the ext4_dir_entry_2 records of one directory block (or inline region), validating each
/// as ext4_check_dir_entry does: rec_len at least 12, 4-aligned, large enough for the name, inside
/// the region, and an inode number inside the filesystem.
/// </summary>
internal ref struct DirentIterator
{
    public const int HeaderSize = 8;
    private readonly ReadOnlySpan<byte> _region;
    private readonly Superblock _sb;
    private readonly uint _dirIno;
    private int _next;

    public DirentIterator(ReadOnlySpan<byte> region, Superblock sb, uint dirIno)
    {
        _region = region;
        _sb = sb;
        _dirIno = dirIno;
        _next = 0;
    }

    public int Offset { get; private set; }
    public int RecLen { get; private set; }
    public uint Inode { get; private set; }
    public byte FileType { get; private set; }
    public ReadOnlySpan<byte> Name { get; private set; }

    public static int RecLenFor(int nameLen) => (HeaderSize + nameLen + 3) & ~3;

    public bool MoveNext()
    {
        if (_next >= _region.Length) return false;
        Offset = _next;
        if (Offset + HeaderSize > _region.Length) throw Bad("entry header past the end of the block");
        var e = _region[Offset..];
        Inode = BinaryPrimitives.ReadUInt32LittleEndian(e);
        RecLen = DecodeRecLen(BinaryPrimitives.ReadUInt16LittleEndian(e[4..]), _region.Length);
        int nameLen = _sb.HasFiletype ? e[6] : BinaryPrimitives.ReadUInt16LittleEndian(e[6..]);
        FileType = _sb.HasFiletype ? e[7] : DirFileType.Unknown;
        if (RecLen < RecLenFor(1) && !(RecLen == 12 && nameLen == 0)) throw Bad($"rec_len {RecLen} too small");
        if ((RecLen & 3) != 0) throw Bad($"rec_len {RecLen} not a multiple of 4");
        if (RecLen < RecLenFor(nameLen)) throw Bad($"rec_len {RecLen} too small for name_len {nameLen}");
        if (Offset + RecLen > _region.Length) throw Bad($"rec_len {RecLen} runs past the end of the block");
        if (Inode > _sb.InodesCount) throw Bad($"inode {Inode} out of range");
        Name = e.Slice(HeaderSize, nameLen);
        _next = Offset + RecLen;
        return true;
    }

    // A 64 KiB block cannot store rec_len 65536 in 16 bits: ext4_rec_len_from_disk's encoding.
    private static int DecodeRecLen(ushort len, int blockSize)
    {
        if (blockSize < 65536) return len;
        if (len == 65535 || len == 0) return 65536;
        return (len & 65532) | ((len & 3) << 16);
    }

    private readonly Ext4Exception Bad(string what) =>
        Ext4Exception.Corrupted($"directory inode {_dirIno}, offset {Offset}: {what}");
}

/// <summary>Linear directory reading and searching, and the per-block checksum rules.</summary>
internal static class Dir
{
    internal enum BlockKind { Leaf, DxRoot, DxNode }

    private const int TailSize = 12;
    private const byte TailFileType = 0xDE;
    private const long InlineDot = 0, InlineDotDot = 1, InlineBase = 2;

    /// <summary>Up to <paramref name="max"/> used entries at or after cookie <paramref name="pos"/>.</summary>
    public static List<DirEntry> Read(Ext4Fs fs, Inode dir, long pos, int max)
    {
        var result = new List<DirEntry>();
        if (pos < 0 || max <= 0) return result;
        if (dir.HasInlineData) return ReadInline(fs, dir, pos, max, result);
        int bs = fs.Super.BlockSize;
        ulong blocks = dir.Size / (ulong)bs;
        var mapper = BlockMapper.For(fs, dir);
        for (ulong lblk = (ulong)pos / (ulong)bs; lblk < blocks && result.Count < max; lblk++)
        {
            var block = ReadBlock(fs, dir, mapper, lblk, out var kind);
            if (kind == BlockKind.DxNode) continue;
            int from = lblk == (ulong)pos / (ulong)bs ? (int)(pos % bs) : 0;
            var it = new DirentIterator(block, fs.Super, dir.Number);
            while (it.MoveNext())
            {
                if (it.Offset < from || it.Inode == 0 || it.Name.Length == 0) continue;
                long next = (long)lblk * bs + it.Offset + it.RecLen;
                result.Add(new DirEntry(it.Inode, it.FileType, it.Name.ToArray(), next));
                if (result.Count == max) break;
            }
        }
        return result;
    }

    /// <summary>Finds a name by scanning every block (directories without an index).</summary>
    public static uint LookupLinear(Ext4Fs fs, Inode dir, ReadOnlySpan<byte> name)
    {
        if (dir.HasInlineData) return LookupInline(fs, dir, name);
        int bs = fs.Super.BlockSize;
        ulong blocks = dir.Size / (ulong)bs;
        var mapper = BlockMapper.For(fs, dir);
        for (ulong lblk = 0; lblk < blocks; lblk++)
        {
            var block = ReadBlock(fs, dir, mapper, lblk, out var kind);
            if (kind == BlockKind.DxNode) continue;
            uint ino = SearchBlock(fs, dir, block, name);
            if (ino != 0) return ino;
        }
        return 0;
    }

    public static uint SearchBlock(Ext4Fs fs, Inode dir, ReadOnlySpan<byte> block, ReadOnlySpan<byte> name)
    {
        var it = new DirentIterator(block, fs.Super, dir.Number);
        while (it.MoveNext())
            if (it.Inode != 0 && it.Name.SequenceEqual(name)) return it.Inode;
        return 0;
    }

    /// <summary>Reads logical block <paramref name="lblk"/> of a directory, classified and checksum-verified.</summary>
    public static byte[] ReadBlock(Ext4Fs fs, Inode dir, BlockMapper mapper, ulong lblk, out BlockKind kind)
    {
        var run = mapper.Map(lblk, 1);
        if (run.IsHole || run.Unwritten) throw Ext4Exception.Corrupted($"directory inode {dir.Number} has a hole at block {lblk}");
        var block = fs.ReadBlock(run.Physical);
        kind = Classify(fs, dir, block, lblk);
        if (fs.Super.HasMetadataCsum)
        {
            if (kind == BlockKind.Leaf) VerifyLeaf(dir, block, lblk);
            else DxDir.VerifyNode(fs, dir, block, kind, lblk);
        }
        return block;
    }

    private static BlockKind Classify(Ext4Fs fs, Inode dir, ReadOnlySpan<byte> block, ulong lblk)
    {
        if (!dir.IsIndexedDir || (fs.Super.FeatureCompat & Features.CompatDirIndex) == 0) return BlockKind.Leaf;
        if (lblk == 0) return BlockKind.DxRoot;
        bool fake = BinaryPrimitives.ReadUInt32LittleEndian(block) == 0 &&
                    BinaryPrimitives.ReadUInt16LittleEndian(block[4..]) is var r && (r == block.Length || (block.Length == 65536 && r is 0 or 65535));
        return fake ? BlockKind.DxNode : BlockKind.Leaf;
    }

    private static void VerifyLeaf(Inode dir, ReadOnlySpan<byte> block, ulong lblk)
    {
        var t = block[^TailSize..];
        if (BinaryPrimitives.ReadUInt32LittleEndian(t) != 0 || BinaryPrimitives.ReadUInt16LittleEndian(t[4..]) != TailSize ||
            t[6] != 0 || t[7] != TailFileType)
            throw Ext4Exception.BadChecksum($"directory inode {dir.Number} block {lblk} has no checksum tail");
        uint stored = BinaryPrimitives.ReadUInt32LittleEndian(t[8..]);
        uint want = Crc.Crc32c(dir.CsumSeed, block[..^TailSize]);
        if (stored != want) throw Ext4Exception.BadChecksum($"directory inode {dir.Number} block {lblk}");
    }

    // Inline directories: "." and ".." are synthesized (the parent is the first 4 bytes of
    // i_block); the entries follow in i_block[4..60] and then in the system.data value.
    private static List<DirEntry> ReadInline(Ext4Fs fs, Inode dir, long pos, int max, List<DirEntry> result)
    {
        var data = Inline.Read(dir);
        uint parent = BinaryPrimitives.ReadUInt32LittleEndian(data);
        if (pos <= InlineDot) result.Add(new DirEntry(dir.Number, DirFileType.Dir, "."u8.ToArray(), InlineDotDot));
        if (pos <= InlineDotDot && result.Count < max) result.Add(new DirEntry(parent, DirFileType.Dir, ".."u8.ToArray(), InlineBase));
        foreach (var (regionStart, region) in InlineRegions(dir, data))
        {
            var it = new DirentIterator(region, fs.Super, dir.Number);
            while (it.MoveNext() && result.Count < max)
            {
                long cookie = InlineBase + regionStart + it.Offset;
                if (cookie < pos || it.Inode == 0 || it.Name.Length == 0) continue;
                result.Add(new DirEntry(it.Inode, it.FileType, it.Name.ToArray(), cookie + it.RecLen));
            }
        }
        return result;
    }

    private static uint LookupInline(Ext4Fs fs, Inode dir, ReadOnlySpan<byte> name)
    {
        var data = Inline.Read(dir);
        if (name.SequenceEqual("."u8)) return dir.Number;
        if (name.SequenceEqual(".."u8)) return BinaryPrimitives.ReadUInt32LittleEndian(data);
        foreach (var (_, region) in InlineRegions(dir, data))
        {
            uint ino = SearchBlock(fs, dir, region, name);
            if (ino != 0) return ino;
        }
        return 0;
    }

    private static IEnumerable<(int Start, byte[] Region)> InlineRegions(Inode dir, byte[] data)
    {
        if (dir.Size > (ulong)data.Length) throw Ext4Exception.Corrupted($"directory inode {dir.Number}: inline size {dir.Size} exceeds its data");
        yield return (0, data[4..Inode.BlockArraySize]);
        if (dir.Size > Inode.BlockArraySize)
            yield return (Inode.BlockArraySize - 4, data[Inode.BlockArraySize..(int)dir.Size]);
    }
}
