using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// A read-only consistency checker: the cross-structure invariants of e2fsck's passes 1, 2, 4 and
/// 5, fast enough to run on every crash state of a workload. Block bitmaps must equal the union of
/// the filesystem's own metadata and every block an in-use inode maps (extent index and leaf
/// blocks, indirect blocks, xattr blocks), with no block claimed twice; inode bitmaps must equal
/// the inodes in use (links &gt; 0 or on the orphan list); group and superblock free counts must
/// equal the bitmaps; every directory entry must point at an in-use inode of the type it names;
/// link counts must equal the entries (directories: 2 + subdirectories); i_size and i_blocks must
/// agree with the mapping. Checksums are verified by the readers it uses.
/// </summary>
internal sealed partial class Ext4Check
{
    private const int MaxProblems = 64;
    private const int LinkMax = 65000; // EXT4_LINK_MAX: past it dir_nlink keeps a directory at 1
    private readonly Ext4Fs _fs;
    private readonly Superblock _sb;
    private readonly GroupDescTable _groups;
    private readonly BlockBitmaps _blockBitmaps;
    private readonly InodeBitmaps _inodeBitmaps;
    private readonly int _bs;
    private readonly uint _ratio;
    private readonly byte[] _claimed;      // one bit per block: referenced by something
    private readonly byte[] _clusterUsed;  // one bit per cluster: expected in the block bitmap
    private readonly Dictionary<ulong, int> _xattrBlocks = [];
    private readonly InodeInfo?[] _inodes;
    private readonly HashSet<uint> _orphans = [];
    private readonly List<string> _problems = [];

    private sealed class InodeInfo
    {
        public ushort Mode, Links;
        public bool IsDir => (Mode & InodeMode.TypeMask) == InodeMode.Dir;
        public int Refs, Subdirs;
        public uint Parent, DotDot;
    }

    private Ext4Check(Ext4Fs fs)
    {
        _fs = fs;
        var raw = new byte[Superblock.Size];
        fs.Device.Read(Superblock.Offset, raw);
        _sb = Superblock.Parse(raw); // the current one, not the one read at open
        _orphans = OrphanChain(fs, raw, _sb);
        _groups = new GroupDescTable(fs.Device, _sb);
        _blockBitmaps = new BlockBitmaps(fs.Device, _sb, _groups);
        _inodeBitmaps = new InodeBitmaps(fs.Device, _sb, _groups);
        _bs = _sb.BlockSize;
        _ratio = (uint)(_sb.ClusterSize / _sb.BlockSize);
        _claimed = new byte[(_sb.BlocksCount + 7) / 8];
        _clusterUsed = new byte[(_sb.BlocksCount / _ratio + 8) / 8];
        _inodes = new InodeInfo?[_sb.InodesCount + 1];
    }

    /// <summary>Every inconsistency found (at most a few dozen); empty when the image is consistent.</summary>
    public static List<string> Run(Ext4Fs fs)
    {
        Ext4Check c;
        try { c = new Ext4Check(fs); }
        catch (Ext4Exception e) { return [$"superblock: {e.Message}"]; }
        try
        {
            c.ClaimFsMetadata();
            if (c._problems.Count == 0) c.ScanInodes();
            if (c._problems.Count == 0) c.ScanDirectories();
            if (c._problems.Count == 0) c.CheckLinks();
            c.CheckBlockBitmaps();
        }
        catch (TooManyProblems) { }
        catch (Ext4Exception e) { c._problems.Add(e.Message); }
        return c._problems;
    }

    private sealed class TooManyProblems : Exception;

    private void Problem(string what)
    {
        _problems.Add(what);
        if (_problems.Count >= MaxProblems) throw new TooManyProblems();
    }

    private ulong ItableBlocks => ((ulong)_sb.InodesPerGroup * _sb.InodeSize + (ulong)_bs - 1) / (ulong)_bs;

    // Superblocks and descriptor blocks (BaseMetaClusters, as the kernel counts them), bitmaps and inode tables.
    private void ClaimFsMetadata()
    {
        if (_sb.FirstDataBlock != 0) Claim(0, _sb.FirstDataBlock, "boot block");
        for (uint g = 0; g < _sb.GroupCount; g++)
        {
            var gd = _groups.Get(g);
            ulong first = _groups.GroupFirstBlock(g);
            uint baseClusters = _blockBitmaps.BaseMetaClusters(g);
            if (_ratio == 1) Claim(first, baseClusters, $"group {g} superblock/descriptors");
            else for (uint c = 0; c < baseClusters; c++) MarkCluster(first / _ratio + c); // bigalloc: counted in whole clusters
            Claim(gd.BlockBitmap, 1, $"group {g} block bitmap");
            Claim(gd.InodeBitmap, 1, $"group {g} inode bitmap");
            Claim(gd.InodeTable, ItableBlocks, $"group {g} inode table");
        }
    }

    private void Claim(ulong block, ulong count, string who)
    {
        if (block + count > _sb.BlocksCount || block + count < block)
        {
            Problem($"{who}: blocks {block}+{count} outside the filesystem");
            return;
        }
        for (ulong b = block; b < block + count; b++)
        {
            int i = (int)(b >> 3), bit = 1 << (int)(b & 7);
            if ((_claimed[i] & bit) != 0) Problem($"{who}: block {b} is already in use by something else");
            _claimed[i] |= (byte)bit;
            MarkCluster(b / _ratio);
        }
    }

    private void MarkCluster(ulong c) => _clusterUsed[c >> 3] |= (byte)(1 << (int)(c & 7));

    // s_last_orphan and the i_dtime chain: inodes there are in use with no links (ext4_orphan_add).
    private static HashSet<uint> OrphanChain(Ext4Fs fs, byte[] rawSuper, Superblock sb)
    {
        var set = new HashSet<uint>();
        uint ino = BinaryPrimitives.ReadUInt32LittleEndian(rawSuper.AsSpan(0xE8));
        var raw = new byte[sb.InodeSize];
        var groups = new GroupDescTable(fs.Device, sb);
        while (ino != 0 && ino <= sb.InodesCount && set.Add(ino))
        {
            uint g = (ino - 1) / sb.InodesPerGroup;
            var gd = groups.Get(g);
            fs.Device.Read((long)gd.InodeTable * sb.BlockSize + (long)((ino - 1) % sb.InodesPerGroup) * sb.InodeSize, raw);
            ino = BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(0x14));
        }
        return set;
    }

    private void CheckBlockBitmaps()
    {
        ulong totalFree = 0;
        for (uint g = 0; g < _sb.GroupCount; g++)
        {
            var gd = _groups.Get(g);
            var bits = new BitSpan(_blockBitmaps.Read(g));
            ulong start = _groups.GroupFirstBlock(g) / _ratio;
            uint n = _blockBitmaps.ClustersInGroup(g), free = 0, reported = 0;
            for (uint c = 0; c < n; c++)
            {
                bool used = bits.Get(c);
                if (!used) free++;
                ulong cl = start + c;
                bool want = (_clusterUsed[cl >> 3] & (1 << (int)(cl & 7))) != 0;
                if (used != want && reported++ < 4)
                    Problem($"block bitmap of group {g}: cluster {cl} is {(used ? "marked used but unreferenced" : "referenced but marked free")}");
            }
            for (uint c = n; c < _sb.ClustersPerGroup; c++)
                if (!bits.Get(c)) { Problem($"block bitmap of group {g}: padding bit {c} is clear"); break; }
            if (gd.FreeBlocksCount != free) Problem($"group {g}: {gd.FreeBlocksCount} free clusters recorded, bitmap has {free}");
            totalFree += free;
        }
        if (_sb.FreeBlocksCount != totalFree * _ratio)
            Problem($"superblock: {_sb.FreeBlocksCount} free blocks recorded, bitmaps have {totalFree * _ratio}");
    }

    private const uint ResizeIno = 7;

    private static ushort U16(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt16LittleEndian(b[at..]);
    private static uint U32(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt32LittleEndian(b[at..]);

    // Pass 1 and the inode half of pass 5: every initialized inode of every group.
    private void ScanInodes()
    {
        bool tracksUnused = _sb.HasMetadataCsum || _sb.HasGdtCsum;
        int isz = _sb.InodeSize;
        ulong totalFree = 0;
        for (uint g = 0; g < _sb.GroupCount; g++)
        {
            var gd = _groups.Get(g);
            var bits = new BitSpan(_inodeBitmaps.Read(g));
            uint initialized = !tracksUnused ? _sb.InodesPerGroup
                : (gd.Flags & GroupDesc.FlagInodeUninit) != 0 ? 0 : _sb.InodesPerGroup - Math.Min(gd.ItableUnused, _sb.InodesPerGroup);
            var table = new byte[(long)initialized * isz];
            _fs.Device.Read((long)gd.InodeTable * _bs, table);
            uint free = 0, dirs = 0;
            for (uint i = 0; i < _sb.InodesPerGroup; i++)
            {
                uint ino = g * _sb.InodesPerGroup + i + 1;
                bool marked = bits.Get(i);
                if (!marked) free++;
                if (i >= initialized)
                {
                    if (marked) Problem($"inode {ino} is marked in use past its group's initialized inodes");
                    continue;
                }
                var raw = table.AsSpan((int)(i * isz), isz);
                ushort links = U16(raw, 0x1A), mode = U16(raw, 0);
                bool inUse = ino < _sb.FirstIno || links > 0 || _orphans.Contains(ino);
                if (inUse != marked) Problem($"inode {ino} is {(inUse ? "in use but marked free" : "unused but marked in use")} in the inode bitmap");
                if (!inUse || mode == 0) continue;
                if (CheckInode(ino, raw) is { IsDir: true }) dirs++;
            }
            if (gd.FreeInodesCount != free) Problem($"group {g}: {gd.FreeInodesCount} free inodes recorded, bitmap has {free}");
            if (gd.UsedDirsCount != dirs) Problem($"group {g}: {gd.UsedDirsCount} directories recorded, found {dirs}");
            totalFree += free;
        }
        if (_sb.FreeInodesCount != totalFree) Problem($"superblock: {_sb.FreeInodesCount} free inodes recorded, bitmaps have {totalFree}");
    }

    private sealed class MapStats
    {
        public ulong Blocks;               // data and mapping blocks (not the xattr block)
        public long Last = -1, LastInit = -1, NextLogical;
        public HashSet<ulong>? Clusters;   // bigalloc: i_blocks counts whole clusters
        public void Add(ulong pblk, ulong count, uint ratio)
        {
            Blocks += count;
            if (Clusters != null) for (ulong b = pblk; b < pblk + count; b++) Clusters.Add(b / ratio);
        }
    }

    private InodeInfo? CheckInode(uint ino, ReadOnlySpan<byte> raw)
    {
        Inode inode;
        try { inode = Inode.Parse(ino, raw, _sb); }
        catch (Ext4Exception e) { Problem(e.Message); return null; }
        var info = new InodeInfo { Mode = inode.Mode, Links = inode.LinksCount };
        _inodes[ino] = info;
        if (ino == ResizeIno)
        {
            // The resize inode's double-indirect block lists the reserved GDT blocks, already claimed as metadata.
            if (U32(inode.BlockArray, 13 * 4) is uint dind and not 0) Claim(dind, 1, "resize inode");
            return info;
        }
        var m = new MapStats { Clusters = _ratio > 1 ? [] : null };
        bool mapsBlocks = !inode.HasInlineData && (inode.IsRegular || inode.IsDir || (inode.IsSymlink && !IsFastSymlink(inode)));
        try
        {
            if (mapsBlocks && inode.HasExtents) WalkExtents(inode, inode.BlockArray, -1, m);
            else if (mapsBlocks) WalkIndirect(inode, m);
        }
        catch (Ext4Exception e) { Problem($"inode {ino}: {e.Message}"); return info; }
        ulong sectors = (m.Clusters != null ? (ulong)m.Clusters.Count * _ratio : m.Blocks) * (ulong)(_bs / 512);
        if (inode.FileAcl != 0)
        {
            if (!_xattrBlocks.TryGetValue(inode.FileAcl, out int n)) Claim(inode.FileAcl, 1, $"inode {ino} xattr block");
            _xattrBlocks[inode.FileAcl] = n + 1;
            sectors += (ulong)_sb.ClusterSize / 512;
        }
        if (inode.Sectors != sectors) Problem($"inode {ino}: i_blocks is {inode.Sectors} sectors, its blocks make {sectors}");
        CheckSize(inode, m, mapsBlocks);
        return info;
    }

    private bool IsFastSymlink(Inode inode) =>
        inode.Sectors == (inode.FileAcl != 0 ? (ulong)(_sb.ClusterSize / 512) : 0);

    // e2fsck's bad_size rules: directories end at their last block; a file's initialized blocks lie within i_size.
    private void CheckSize(Inode inode, MapStats m, bool mapsBlocks)
    {
        if (!mapsBlocks) return;
        ulong size = inode.Size;
        if (inode.IsDir)
        {
            if (size % (ulong)_bs != 0 || (long)(size / (ulong)_bs) != m.Last + 1)
                Problem($"directory inode {inode.Number}: size {size} but its last block is {m.Last}");
        }
        else if (m.LastInit >= 0 && size < (ulong)m.LastInit * (ulong)_bs)
            Problem($"inode {inode.Number}: size {size} but block {m.LastInit} is mapped and initialized");
    }

    private void WalkExtents(Inode inode, ReadOnlySpan<byte> node, int expectDepth, MapStats m)
    {
        string where = $"inode {inode.Number} extent node";
        int entries = U16(node, 2), max = U16(node, 4), depth = U16(node, 6);
        if (U16(node, 0) != ExtentMapper.Magic || max == 0 || entries > max || 12 * (max + 1) > node.Length ||
            depth > ExtentMapper.MaxDepth || (expectDepth >= 0 && depth != expectDepth))
        {
            Problem($"{where}: bad header");
            return;
        }
        for (int i = 0; i < entries; i++)
        {
            var e = node[(12 * (i + 1))..];
            uint first = U32(e, 0);
            if (depth > 0)
            {
                ulong child = U32(e, 4) | (ulong)U16(e, 8) << 32;
                if (child >= _sb.BlocksCount) { Problem($"{where}: index block {child} outside the filesystem"); continue; }
                Claim(child, 1, where);
                m.Add(child, 1, _ratio);
                var block = _fs.ReadBlock(child);
                VerifyExtentTail(inode, block, child);
                WalkExtents(inode, block, depth - 1, m);
                continue;
            }
            ushort rawLen = U16(e, 4);
            bool unwritten = rawLen > Extent.MaxInitLength;
            uint len = unwritten ? rawLen - Extent.MaxInitLength : rawLen;
            ulong phys = U32(e, 8) | (ulong)U16(e, 6) << 32;
            if (len == 0 || first < m.NextLogical) { Problem($"{where}: extent at {first} is empty or overlaps the one before"); continue; }
            Claim(phys, len, $"inode {inode.Number} extent {first}+{len}");
            m.Add(phys, len, _ratio);
            m.NextLogical = first + len;
            m.Last = first + len - 1;
            if (!unwritten) m.LastInit = m.Last;
        }
    }

    private void VerifyExtentTail(Inode inode, ReadOnlySpan<byte> block, ulong pblk)
    {
        if (!_sb.HasMetadataCsum) return;
        int tail = 12 * (U16(block, 4) + 1);
        if (tail + 4 > block.Length || U32(block, tail) != Crc.Crc32c(inode.CsumSeed, block[..tail]))
            Problem($"inode {inode.Number}: extent block {pblk} checksum");
    }

    private void WalkIndirect(Inode inode, MapStats m)
    {
        var arr = inode.BlockArray;
        for (int i = 0; i < 12; i++)
            if (U32(arr, i * 4) is uint p and not 0) MapData(inode, p, i, m);
        ulong per = (ulong)_bs / 4, span = per, logical = 12;
        for (int level = 1; level <= 3; level++, logical += span, span *= per)
            if (U32(arr, (11 + level) * 4) is uint p and not 0) WalkIndirectBlock(inode, p, level, logical, m);
    }

    private void WalkIndirectBlock(Inode inode, ulong pblk, int level, ulong logical, MapStats m)
    {
        if (pblk >= _sb.BlocksCount) { Problem($"inode {inode.Number}: indirect block {pblk} outside the filesystem"); return; }
        Claim(pblk, 1, $"inode {inode.Number} indirect block");
        m.Add(pblk, 1, _ratio);
        var block = _fs.ReadBlock(pblk);
        ulong per = (ulong)_bs / 4, span = 1;
        for (int l = 1; l < level; l++) span *= per;
        for (int j = 0; j < (int)per; j++)
        {
            uint p = U32(block, j * 4);
            if (p == 0) continue;
            ulong l = logical + (ulong)j * span;
            if (level == 1) MapData(inode, p, (long)l, m);
            else WalkIndirectBlock(inode, p, level - 1, l, m);
        }
    }

    private void MapData(Inode inode, ulong pblk, long logical, MapStats m)
    {
        Claim(pblk, 1, $"inode {inode.Number} block {logical}");
        m.Add(pblk, 1, _ratio);
        m.Last = Math.Max(m.Last, logical);
        m.LastInit = m.Last;
    }

    // Pass 2: every entry of every directory in use.
    private void ScanDirectories()
    {
        for (uint ino = 1; ino < _inodes.Length; ino++)
        {
            if (_inodes[ino] is not { IsDir: true } info) continue;
            List<DirEntry> entries;
            try { entries = Dir.Read(_fs, _fs.ReadInode(ino), 0, int.MaxValue); }
            catch (Ext4Exception e) { Problem($"directory inode {ino}: {e.Message}"); continue; }
            foreach (var e in entries)
            {
                if (e.Name.AsSpan().SequenceEqual("."u8))
                {
                    if (e.Inode != ino) Problem($"directory inode {ino}: '.' points at {e.Inode}");
                    continue;
                }
                if (e.Name.AsSpan().SequenceEqual(".."u8)) { info.DotDot = e.Inode; continue; }
                var t = e.Inode < _inodes.Length ? _inodes[e.Inode] : null;
                if (t == null || e.Inode < _sb.FirstIno && e.Inode != Ext4Fs.RootIno)
                {
                    Problem($"directory inode {ino}: entry '{e.NameString}' points at inode {e.Inode}, which is not in use");
                    continue;
                }
                if (_sb.HasFiletype && e.FileType != DirFileType.FromMode(t.Mode))
                    Problem($"directory inode {ino}: entry '{e.NameString}' has file type {e.FileType}, inode {e.Inode} is {DirFileType.FromMode(t.Mode)}");
                t.Refs++;
                if (!t.IsDir) continue;
                info.Subdirs++;
                if (t.Parent != 0) Problem($"directory inode {e.Inode} has entries in both {t.Parent} and {ino}");
                t.Parent = ino;
            }
        }
    }

    // Pass 4 (and pass 3's parent check): link counts against the entries found.
    private void CheckLinks()
    {
        for (uint ino = 1; ino < _inodes.Length; ino++)
        {
            if (_inodes[ino] is not { } info || (ino < _sb.FirstIno && ino != Ext4Fs.RootIno)) continue;
            if (!info.IsDir)
            {
                if (info.Links != info.Refs) Problem($"inode {ino}: i_links_count {info.Links}, {info.Refs} directory entries");
                continue;
            }
            int want = 2 + info.Subdirs;
            if (info.Links != want && !(_sb.HasDirNlink && info.Links == 1 && want >= LinkMax))
                Problem($"directory inode {ino}: i_links_count {info.Links}, expected {want}");
            uint parent = ino == Ext4Fs.RootIno ? ino : info.Parent;
            if (ino != Ext4Fs.RootIno && info.Refs != 1) Problem($"directory inode {ino} has {info.Refs} entries naming it");
            if (info.DotDot != parent) Problem($"directory inode {ino}: '..' is {info.DotDot}, its parent is {parent}");
        }
        foreach (var (block, n) in _xattrBlocks)
        {
            uint refcount = U32(_fs.ReadBlock(block), 4);
            if (refcount != n) Problem($"xattr block {block}: h_refcount {refcount}, {n} inodes use it");
        }
    }
}
