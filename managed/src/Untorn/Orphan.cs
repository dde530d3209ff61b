using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// The in-memory side of the orphan record: which inodes are unlinked but still open (freed at
/// their last close), the on-disk list in order (head first: <c>Chain[i]</c>'s i_dtime names
/// <c>Chain[i + 1]</c>), and the orphan-file slot of each inode recorded there.
/// </summary>
internal sealed class OrphanState
{
    public readonly HashSet<uint> Pending = [];
    public readonly List<uint> Chain = [];
    public readonly Dictionary<uint, int> FileSlots = [];
    public OrphanFile? File;
}

/// <summary>
/// The orphan file's geometry (COMPAT_ORPHAN_FILE, Documentation/filesystems/ext4/orphan.rst):
/// each block is an array of __le32 inode numbers (0 = free) closed by an 8-byte tail, ob_magic
/// 0x0b10ca04 then ob_checksum = crc32c(the orphan inode's checksum seed, le64 physical block
/// number, the entries) when metadata_csum is on. Slot s is entry s % PerBlock of block s / PerBlock.
/// </summary>
internal sealed class OrphanFile(ulong[] physical, int perBlock, uint seed, int used)
{
    public const uint Magic = 0x0b10ca04;
    public ulong[] Physical { get; } = physical;
    public int PerBlock { get; } = perBlock;
    public uint Seed { get; } = seed;
    public int Used { get; set; } = used;

    public uint Checksum(ulong pblk, ReadOnlySpan<byte> block)
    {
        Span<byte> le = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(le, pblk);
        return Crc.Crc32c(Crc.Crc32c(Seed, le), block[..(PerBlock * 4)]);
    }
}

// Orphan handling (fs/ext4/orphan.c). An inode that loses its last link while open is recorded in
// the same transaction as the unlink, and dropped from the record in the transaction that frees it
// at the last close, so a crash in between leaves an orphan that recovery at the next read-write
// open (ext4_orphan_cleanup), e2fsck or the kernel finishes. Where the filesystem has an orphan
// file the entry goes there (the list when it is full, as the kernel falls back); otherwise to the
// list headed by s_last_orphan and threaded through i_dtime. Like ext4_orphan_add, nothing is
// recorded without a journal: a crash there needs e2fsck anyway.
//
// Truncate orphans: the kernel also records a file while a truncate or extending write spans
// several transactions. In untorn truncate, fallocate, writes and inode freeing are each one
// handle, hence one transaction, so there is no such window and nothing to record; recovery still
// truncates the linked orphans (links > 0) the kernel leaves behind.
//
// ORPHAN_PRESENT: the kernel sets it at every journaled read-write mount and clears it at a clean
// unmount; untorn sets it in the transaction that fills the first orphan-file slot and clears it in
// the one that empties the last, so it is set exactly when an entry may be in use (which is what
// e2fsck and the kernel's recovery test it for).
//
// Read-only opens process nothing (the kernel does, unless the device itself is read-only): reads
// see the image as it is — an orphan is reachable from no directory, and a linked orphan's blocks
// past i_size are never read.
public sealed partial class Ext4Fs
{
    private const int LastOrphanOffset = 0xE8, OrphanFileInumOffset = 0x280, DtimeOffset = 0x14;
    private readonly OrphanState _orphans = new();

    /// <summary>Inode numbers unlinked while open and not yet freed (tests and diagnostics).</summary>
    internal uint[] PendingOrphans
    {
        get { lock (_orphans) return _orphans.Pending.ToArray(); }
    }

    /// <summary>ext4_orphan_add for an inode whose last link goes while it is open; the caller saves the inode.</summary>
    private void OrphanAdd(TransactionManager.Handle h, InodeBuffer inode)
    {
        uint ino = inode.Number;
        lock (_orphans) _orphans.Pending.Add(ino);
        h.OnAbort(() => { lock (_orphans) _orphans.Pending.Remove(ino); });
        if (!IsCrashSafe) return;
        if (OrphanFileAdd(h, ino)) return;
        var raw = ReadSuperRaw();
        BinaryPrimitives.WriteUInt32LittleEndian(inode.Raw.AsSpan(DtimeOffset), BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(LastOrphanOffset)));
        EditSuper(h, sb => BinaryPrimitives.WriteUInt32LittleEndian(sb.AsSpan(LastOrphanOffset), ino));
        lock (_orphans) _orphans.Chain.Insert(0, ino);
        h.OnAbort(() => { lock (_orphans) _orphans.Chain.Remove(ino); });
    }

    /// <summary>ext4_orphan_del: unhooks the inode from the file or the list (its predecessor or s_last_orphan takes its successor); the caller saves the inode.</summary>
    private void OrphanDelete(TransactionManager.Handle h, InodeBuffer inode)
    {
        uint ino = inode.Number;
        int slot, idx;
        lock (_orphans)
        {
            slot = _orphans.FileSlots.GetValueOrDefault(ino, -1);
            idx = _orphans.Chain.IndexOf(ino);
        }
        if (slot >= 0)
        {
            SetOrphanFileSlot(h, slot, 0);
            lock (_orphans) _orphans.FileSlots.Remove(ino);
            h.OnAbort(() => { lock (_orphans) _orphans.FileSlots[ino] = slot; });
            return;
        }
        if (idx < 0) return;
        uint next = BinaryPrimitives.ReadUInt32LittleEndian(inode.Raw.AsSpan(DtimeOffset));
        if (idx == 0) EditSuper(h, sb => BinaryPrimitives.WriteUInt32LittleEndian(sb.AsSpan(LastOrphanOffset), next));
        else
        {
            uint prevIno;
            lock (_orphans) prevIno = _orphans.Chain[idx - 1];
            var prev = InodeBuffer.Load(this, prevIno);
            BinaryPrimitives.WriteUInt32LittleEndian(prev.Raw.AsSpan(DtimeOffset), next);
            prev.Save(h, this);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(inode.Raw.AsSpan(DtimeOffset), 0);
        lock (_orphans) _orphans.Chain.RemoveAt(idx);
        h.OnAbort(() => { lock (_orphans) _orphans.Chain.Insert(idx, ino); });
    }

    /// <summary>The last descriptor of an unlinked file closed: it leaves the orphan record and its space is freed, in one transaction.</summary>
    internal void ReleaseIfUnlinked(uint ino)
    {
        lock (_orphans)
            if (!_orphans.Pending.Contains(ino)) return;
        if (Files.IsOpen(ino)) return;
        var ws = Writer;
        using var h = ws.Transactions.Start();
        lock (_orphans)
            if (!_orphans.Pending.Contains(ino) || Files.IsOpen(ino)) return; // raced with another close
        FreeOrphan(h, ws, ino);
        h.Complete();
    }

    /// <summary>Closing the image closes every descriptor: each pending orphan is freed, as at process exit.</summary>
    private void ReleaseAllUnlinked()
    {
        uint[] pending;
        lock (_orphans) pending = _orphans.Pending.ToArray();
        if (pending.Length == 0) return;
        var ws = Writer;
        foreach (uint ino in pending)
        {
            using var h = ws.Transactions.Start();
            FreeOrphan(h, ws, ino);
            h.Complete();
        }
    }

    private void FreeOrphan(TransactionManager.Handle h, WriteState ws, uint ino)
    {
        var target = InodeBuffer.Load(this, ino);
        OrphanDelete(h, target);
        lock (_orphans) _orphans.Pending.Remove(ino);
        h.OnAbort(() => { lock (_orphans) _orphans.Pending.Add(ino); });
        FreeInode(h, ws, target, target.Parsed.IsDir);
    }

    // A copy of the primary superblock as the running transaction leaves it.
    private byte[] ReadSuperRaw()
    {
        var raw = new byte[Superblock.Size];
        Device.Read(Superblock.Offset, raw);
        return raw;
    }

    private void EditSuper(TransactionManager.Handle h, Action<byte[]> edit)
    {
        int bs = Super.BlockSize;
        ulong block = (ulong)(Superblock.Offset / bs);
        var data = h.GetWriteAccess(block);
        var raw = data.AsSpan(Superblock.Offset % bs, Superblock.Size);
        var copy = raw.ToArray();
        edit(copy);
        Superblock.UpdateChecksum(copy);
        copy.CopyTo(raw);
        h.Dirty(block, data);
    }

    private void SetOrphanPresent(TransactionManager.Handle h, bool present) => EditSuper(h, sb =>
    {
        uint ro = BinaryPrimitives.ReadUInt32LittleEndian(sb.AsSpan(0x64));
        ro = present ? ro | Features.RoCompatOrphanPresent : ro & ~Features.RoCompatOrphanPresent;
        BinaryPrimitives.WriteUInt32LittleEndian(sb.AsSpan(0x64), ro);
    });

    private bool HasOrphanFile => (Super.FeatureCompat & Features.CompatOrphanFile) != 0;

    // ext4_orphan_file_add: the first free slot (the kernel hashes by CPU; any free slot is valid).
    private bool OrphanFileAdd(TransactionManager.Handle h, uint ino)
    {
        if (!HasOrphanFile) return false;
        var of = LoadOrphanFile();
        if (of.Used >= of.Physical.Length * of.PerBlock) return false; // full: the list takes it
        var block = new byte[Super.BlockSize];
        for (int b = 0; b < of.Physical.Length; b++)
        {
            Device.Read((long)of.Physical[b] * Super.BlockSize, block);
            for (int j = 0; j < of.PerBlock; j++)
            {
                if (BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(j * 4)) != 0) continue;
                int slot = b * of.PerBlock + j;
                SetOrphanFileSlot(h, slot, ino);
                lock (_orphans) _orphans.FileSlots[ino] = slot;
                h.OnAbort(() => { lock (_orphans) _orphans.FileSlots.Remove(ino); });
                return true;
            }
        }
        return false;
    }

    // Writes one entry with the block's checksum; keeps ORPHAN_PRESENT set exactly while an entry is used.
    private void SetOrphanFileSlot(TransactionManager.Handle h, int slot, uint ino)
    {
        var of = LoadOrphanFile();
        ulong pblk = of.Physical[slot / of.PerBlock];
        var data = h.GetWriteAccess(pblk);
        var entry = data.AsSpan(slot % of.PerBlock * 4, 4);
        bool wasUsed = BinaryPrimitives.ReadUInt32LittleEndian(entry) != 0;
        BinaryPrimitives.WriteUInt32LittleEndian(entry, ino);
        if (Super.HasMetadataCsum)
            BinaryPrimitives.WriteUInt32LittleEndian(data.AsSpan(Super.BlockSize - 4), of.Checksum(pblk, data));
        h.Dirty(pblk, data);
        int delta = (ino != 0 ? 1 : 0) - (wasUsed ? 1 : 0);
        if (delta == 0) return;
        int before = of.Used;
        of.Used += delta;
        h.OnAbort(() => of.Used = before);
        if (before == 0 || of.Used == 0) SetOrphanPresent(h, of.Used > 0);
    }

    // ext4_init_orphan_info: the file's blocks (no holes, at most 512 of them), magic and checksums checked.
    private OrphanFile LoadOrphanFile()
    {
        lock (_orphans)
            if (_orphans.File is { } loaded) return loaded;
        uint inum = BinaryPrimitives.ReadUInt32LittleEndian(ReadSuperRaw().AsSpan(OrphanFileInumOffset));
        if (inum == 0 || inum > Super.InodesCount) throw Ext4Exception.Corrupted($"orphan file inode {inum} out of range");
        var inode = ReadInode(inum);
        int bs = Super.BlockSize;
        if (inode.Size % (ulong)bs != 0 || inode.Size > 512UL * (ulong)bs || inode.Size == 0)
            throw Ext4Exception.Corrupted($"orphan file (inode {inum}) has size {inode.Size}");
        var physical = new ulong[inode.Size / (ulong)bs];
        int perBlock = (bs - 8) / 4, used = 0;
        var mapper = BlockMapper.For(this, inode);
        var probe = new OrphanFile(physical, perBlock, Inode.ChecksumSeed(Super, inum, inode.Generation), 0);
        var block = new byte[bs];
        for (int b = 0; b < physical.Length; b++)
        {
            var run = mapper.Map((ulong)b, 1);
            if (run.IsHole || run.Unwritten) throw Ext4Exception.Corrupted($"orphan file block {b} is a hole");
            physical[b] = run.Physical;
            Device.Read((long)run.Physical * bs, block);
            if (BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(bs - 8)) != OrphanFile.Magic)
                throw Ext4Exception.Corrupted($"orphan file block {b}: bad magic");
            if (Super.HasMetadataCsum && BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(bs - 4)) != probe.Checksum(run.Physical, block))
                throw Ext4Exception.BadChecksum($"orphan file block {b}");
            for (int j = 0; j < perBlock; j++)
                if (BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(j * 4)) != 0) used++;
        }
        probe.Used = used;
        lock (_orphans) return _orphans.File ??= probe;
    }

    /// <summary>
    /// ext4_orphan_cleanup at a read-write open, after journal replay: the list first, then the
    /// orphan file. Inodes without links are freed (blocks, bitmap bit, counts); linked ones are
    /// truncated to i_size. Each orphan is one committed transaction that also drops it from the
    /// record, so a crash during recovery leaves a record the next open resumes from. Everything is
    /// checked before the first write: an orphan untorn cannot free yet fails the open with
    /// EOPNOTSUPP and leaves the image untouched (e2fsck or the kernel can finish it).
    /// </summary>
    internal void RecoverOrphans()
    {
        var raw = ReadSuperRaw();
        uint head = BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(LastOrphanOffset));
        bool filePresent = HasOrphanFile && (BinaryPrimitives.ReadUInt32LittleEndian(raw.AsSpan(0x64)) & Features.RoCompatOrphanPresent) != 0;
        if (head == 0 && !filePresent) return;
        var fileEntries = filePresent ? OrphanFileEntries() : [];
        foreach (uint ino in ListedOrphans(head).Concat(fileEntries.Select(e => e.Ino)))
            if (ValidOrphan(ino) is { } inode) CheckRecoverable(inode);

        var ws = Writer;
        while ((head = BinaryPrimitives.ReadUInt32LittleEndian(ReadSuperRaw().AsSpan(LastOrphanOffset))) != 0)
        {
            using (var h = ws.Transactions.Start())
            {
                var valid = ValidOrphan(head);
                uint next = valid == null ? 0 : valid.Dtime; // a bad orphan ends the list, as in the kernel
                EditSuper(h, sb => BinaryPrimitives.WriteUInt32LittleEndian(sb.AsSpan(LastOrphanOffset), next));
                if (valid != null) FinishOrphan(h, ws, head);
                h.Complete();
            }
            ws.Transactions.Commit();
        }
        foreach (var (slot, ino) in fileEntries)
        {
            using (var h = ws.Transactions.Start())
            {
                SetOrphanFileSlot(h, slot, 0); // a bad entry is dropped too, so the file ends clean
                if (ValidOrphan(ino) != null) FinishOrphan(h, ws, ino);
                h.Complete();
            }
            ws.Transactions.Commit();
        }
        if (filePresent && LoadOrphanFile().Used == 0 && (Super.FeatureRoCompat & Features.RoCompatOrphanPresent) != 0)
        {
            // Set with no entry in use (the kernel sets it at every mount): clear it.
            using (var h = ws.Transactions.Start())
            {
                if ((BinaryPrimitives.ReadUInt32LittleEndian(ReadSuperRaw().AsSpan(0x64)) & Features.RoCompatOrphanPresent) != 0)
                    SetOrphanPresent(h, false);
                h.Complete();
            }
            ws.Transactions.Commit();
        }
    }

    // The list as it stands (read-only), stopping at a bad link or a loop.
    private List<uint> ListedOrphans(uint head)
    {
        var seen = new List<uint>();
        for (uint ino = head; ino != 0 && !seen.Contains(ino) && ValidOrphan(ino) is { } inode; ino = inode.Dtime)
            seen.Add(ino);
        return seen;
    }

    private List<(int Slot, uint Ino)> OrphanFileEntries()
    {
        var of = LoadOrphanFile();
        var entries = new List<(int, uint)>();
        var block = new byte[Super.BlockSize];
        for (int b = 0; b < of.Physical.Length; b++)
        {
            Device.Read((long)of.Physical[b] * Super.BlockSize, block);
            for (int j = 0; j < of.PerBlock; j++)
                if (BinaryPrimitives.ReadUInt32LittleEndian(block.AsSpan(j * 4)) is var ino && ino != 0)
                    entries.Add((b * of.PerBlock + j, ino));
        }
        return entries;
    }

    // ext4_orphan_get: a real orphan is a non-reserved inode whose bitmap bit is set and whose
    // i_dtime (the next list entry) is a valid inode number; anything else is "bad orphan inode".
    private Inode? ValidOrphan(uint ino)
    {
        if (ino < Super.FirstIno || ino > Super.InodesCount) return null;
        uint g = (ino - 1) / Super.InodesPerGroup;
        if (!new BitSpan(InodeBitmaps.Read(g)).Get((ino - 1) % Super.InodesPerGroup)) return null;
        Inode inode;
        try { inode = ReadInode(ino); }
        catch (Ext4Exception) { return null; } // iget failed: a bad orphan, not a failed open
        if (inode.Dtime > Super.InodesCount) return null;
        if (inode.LinksCount != 0 && !(inode.IsRegular || inode.IsDir || inode.IsSymlink)) return null;
        return inode;
    }

    // What untorn cannot free yet: indirect-mapped blocks, shared xattr blocks.
    private void CheckRecoverable(Inode inode)
    {
        ulong eaSectors = inode.FileAcl != 0 ? (ulong)Super.ClusterSize / 512 : 0;
        bool hasData = inode.Sectors > eaSectors && !inode.HasInlineData;
        if ((hasData && !inode.HasExtents) || (inode.FileAcl != 0 && inode.LinksCount == 0))
            throw new Ext4Exception(Errno.EOPNOTSUPP,
                $"orphan inode {inode.Number}: freeing indirect-mapped or xattr-block space is not supported yet (e2fsck -fy or a kernel mount finishes it)");
    }

    // ext4_process_orphan: no links → evict (free everything); links → truncate to i_size.
    private void FinishOrphan(TransactionManager.Handle h, WriteState ws, uint ino)
    {
        var inode = InodeBuffer.Load(this, ino);
        BinaryPrimitives.WriteUInt32LittleEndian(inode.Raw.AsSpan(DtimeOffset), 0);
        if (inode.LinksCount == 0)
        {
            FreeInode(h, ws, inode, inode.Parsed.IsDir);
            return;
        }
        var parsed = inode.Parsed;
        if (parsed.HasExtents && !parsed.HasInlineData) FreeBlocksPast(h, ws, inode, inode.Size);
        inode.Save(h, this);
    }
}
