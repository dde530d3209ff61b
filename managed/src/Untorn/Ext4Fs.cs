namespace Untorn;

/// <summary>How an image is opened.</summary>
public sealed record OpenOptions
{
    /// <summary>Open read-only: nothing is ever written to the image.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>
    /// With ReadOnly, do not replay a journal that needs recovery: reads see the image as it is on
    /// disk (possibly older than what was committed), and <see cref="Ext4Fs.JournalNotReplayed"/> says so.
    /// </summary>
    public bool NoReplay { get; init; }

    /// <summary>How often pending metadata is committed without an fsync (jbd2's commit interval); zero or less: only on fsync, sync writes and close.</summary>
    public TimeSpan CommitInterval { get; init; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// An opened ext4 filesystem: the superblock and group descriptors, inode and block access, and
/// the data read path. Opening is lazy (only the superblock is read); every structure is validated
/// when first used. Safe for concurrent callers: state after open is immutable or concurrent.
/// </summary>
public sealed partial class Ext4Fs : IDisposable
{
    public const uint RootIno = 2;
    private readonly GroupDescTable _groups;
    private int _disposed;

    private Ext4Fs(IBlockDevice device, Superblock sb, bool readOnly)
    {
        Cache = new BufferCache(device, sb.BlockSize);
        Device = Cache;
        Super = sb;
        ReadOnly = readOnly;
        _groups = new GroupDescTable(Cache, sb);
        Files = new OpenFileTable();
    }

    public Superblock Super { get; }
    /// <summary>The image as the engine sees it: uncommitted metadata overlaid on the backing device.</summary>
    public IBlockDevice Device { get; }
    internal BufferCache Cache { get; }
    public bool ReadOnly { get; }
    internal OpenFileTable Files { get; }

    public static Ext4Fs Open(string path, OpenOptions? options = null)
    {
        options ??= new OpenOptions();
        bool ro = options.ReadOnly;
        IBlockDevice dev;
        try { dev = new FileBlockDevice(path, ro); }
        catch (Ext4Exception e) when (!ro && e.Errno is Errno.EROFS or Errno.EACCES)
        {
            // A file we may not write (e.g. chmod a-w) still opens, read-only, as mount falls back to ro.
            dev = new FileBlockDevice(path, readOnly: true);
        }
        try { return Open(dev, options); }
        catch { dev.Dispose(); throw; }
    }

    /// <summary>Opens the filesystem on <paramref name="device"/>; the returned object owns it.</summary>
    public static Ext4Fs Open(IBlockDevice device, OpenOptions? options = null)
    {
        options ??= new OpenOptions();
        if (device.Size < Superblock.Offset + Superblock.Size)
            throw new Ext4Exception(Errno.EINVAL, $"device of {device.Size} bytes is too small for ext4");
        var raw = new byte[Superblock.Size];
        device.Read(Superblock.Offset, raw);
        Superblock sb;
        byte[]? backupRaw = null;
        try { sb = Superblock.Parse(raw); }
        catch (Ext4Exception e) when (e.IsBadChecksum && SuperblockBackup.Find(device, raw) is { } backup)
        {
            (sb, backupRaw) = backup; // a torn primary: continue from group 1's copy, repaired below
        }

        uint unsupported = sb.FeatureIncompat & ~Features.IncompatReadable;
        if (unsupported != 0)
            throw new Ext4Exception(Errno.EOPNOTSUPP, $"unsupported INCOMPAT features 0x{unsupported:x}");
        if ((ulong)sb.BlockSize * sb.BlocksCount > (ulong)device.Size)
            throw new Ext4Exception(Errno.EINVAL, $"bad geometry: {sb.BlocksCount} blocks of {sb.BlockSize} exceed the device ({device.Size} bytes); truncated image?");

        bool readOnly = options.ReadOnly || device.IsReadOnly;
        if (!readOnly)
        {
            uint unknownRo = sb.FeatureRoCompat & ~Features.RoCompatKnown;
            if (unknownRo != 0 || (sb.FeatureRoCompat & Features.RoCompatReadonly) != 0)
                throw new Ext4Exception(Errno.EROFS, $"RO_COMPAT features 0x{unknownRo | (sb.FeatureRoCompat & Features.RoCompatReadonly):x} allow read-only access only");
        }
        bool notReplayed = false;
        int replayed = 0;
        if (sb.NeedsRecovery || backupRaw != null)
        {
            if (readOnly && options.NoReplay && backupRaw == null) notReplayed = true;
            else (device, sb, replayed) = Recover(device, sb, readOnly, backupRaw);
        }
        var fs = new Ext4Fs(device, sb, readOnly) { JournalNotReplayed = notReplayed, ReplayedTransactions = replayed, CommitInterval = options.CommitInterval };
        fs.ReadInode(RootIno); // a filesystem whose root cannot be read is not worth handing out
        if (!readOnly)
        {
            try { fs.RecoverOrphans(); }
            catch { fs.Dispose(); throw; }
        }
        return fs;
    }

    /// <summary>The image needed journal recovery and was opened read-only with NoReplay: reads show the unreplayed state.</summary>
    public bool JournalNotReplayed { get; private init; }

    internal TimeSpan CommitInterval { get; private init; }

    /// <summary>How many committed transactions recovery replayed at open.</summary>
    public int ReplayedTransactions { get; private init; }

    // Replays the journal as the kernel does at mount: into the image when writable; for a
    // read-only open into an overlay, so reads see the recovered filesystem and the image is untouched.
    private static (IBlockDevice, Superblock, int) Recover(IBlockDevice device, Superblock sb, bool readOnly, byte[]? backupRaw)
    {
        var probe = new Ext4Fs(device, sb, readOnly: true); // only maps the journal inode; never disposed (it would close the device)
        bool journaled = (sb.FeatureCompat & Features.CompatHasJournal) != 0 && sb.JournalInum != 0;
        Jbd2Recovery.Plan plan = new([], 0, 0, 0);
        Jbd2Journal? journal = journaled ? Jbd2Journal.Open(probe) : null;
        if (journal != null) plan = Jbd2Recovery.Scan(device, journal);
        ulong sbBlock = (ulong)(Superblock.Offset / sb.BlockSize);
        if (!readOnly)
        {
            if (journal != null) Jbd2Recovery.Apply(device, journal, plan);
            device.Write(Superblock.Offset, SuperblockBackup.FinalPrimary(device, backupRaw));
            device.Flush();
        }
        else
        {
            var overlay = new BufferCache(device, sb.BlockSize);
            foreach (var (home, data) in plan.Writes)
                if (home < sb.BlocksCount) overlay.Publish(home, data);
            var block = overlay.Snapshot(sbBlock);
            SuperblockBackup.FinalPrimary(overlay, backupRaw).CopyTo(block.AsSpan(Superblock.Offset % sb.BlockSize));
            overlay.Publish(sbBlock, block);
            device = overlay;
        }
        var fresh = new byte[Superblock.Size];
        device.Read(Superblock.Offset, fresh);
        return (device, Superblock.Parse(fresh), plan.Transactions);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try
        {
            try { if (_write != null) ReleaseAllUnlinked(); }
            finally { _write?.Dispose(); }
        }
        finally
        {
            Files.CloseAll();
            Device.Dispose();
        }
    }

    internal GroupDesc Group(uint g) => _groups.Get(g);
    internal GroupDescTable Groups => _groups;
    internal BlockBitmaps BlockBitmaps => field ??= new BlockBitmaps(Device, Super, _groups);
    internal InodeBitmaps InodeBitmaps => field ??= new InodeBitmaps(Device, Super, _groups);

    /// <summary>Reads and verifies inode <paramref name="ino"/>.</summary>
    public Inode ReadInode(uint ino)
    {
        var raw = new byte[Super.InodeSize];
        Device.Read(InodeOffset(ino), raw);
        return Inode.Parse(ino, raw, Super);
    }

    /// <summary>Byte offset of inode <paramref name="ino"/> in its group's inode table.</summary>
    internal long InodeOffset(uint ino)
    {
        var sb = Super;
        if (ino == 0 || ino > sb.InodesCount) throw Ext4Exception.Corrupted($"inode number {ino} out of range");
        uint group = (ino - 1) / sb.InodesPerGroup, index = (ino - 1) % sb.InodesPerGroup;
        var gd = Group(group);
        if ((gd.Flags & GroupDesc.FlagInodeUninit) != 0 && (sb.HasMetadataCsum || sb.HasGdtCsum))
            throw Ext4Exception.Corrupted($"inode {ino} is in an uninitialized inode table");
        return (long)gd.InodeTable * sb.BlockSize + (long)index * sb.InodeSize;
    }

    /// <summary>Reads inode <paramref name="ino"/> as something a directory entry points to: it must be in use.</summary>
    internal Inode ReadLinkedInode(uint ino)
    {
        var inode = ReadInode(ino);
        if (inode.LinksCount == 0 && inode.Mode == 0)
            throw Ext4Exception.Corrupted($"directory entry points to unused inode {ino}");
        return inode;
    }

    internal byte[] ReadBlock(ulong pblk)
    {
        if (pblk >= Super.BlocksCount) throw Ext4Exception.Corrupted($"block {pblk} beyond the filesystem");
        var b = new byte[Super.BlockSize];
        Device.Read((long)pblk * Super.BlockSize, b);
        return b;
    }

    /// <summary>ext4_inode_block_valid: a run of blocks a file points to must lie inside the filesystem, past the superblock.</summary>
    internal void CheckDataBlocks(ulong pblk, ulong count, string where)
    {
        if (pblk <= Super.FirstDataBlock || pblk + count < pblk || pblk + count > Super.BlocksCount)
            throw Ext4Exception.Corrupted($"{where}: blocks {pblk}+{count} outside the filesystem");
    }

    /// <summary>Reads file bytes at <paramref name="offset"/>; returns the count (0 at or past EOF). Holes and unwritten extents read as zeros.</summary>
    public int ReadData(Inode inode, Span<byte> buffer, long offset)
    {
        if (offset < 0) throw new Ext4Exception(Errno.EINVAL, "negative offset");
        if ((ulong)offset >= inode.Size || buffer.IsEmpty) return 0;
        int count = (int)Math.Min((ulong)buffer.Length, inode.Size - (ulong)offset);
        var dest = buffer[..count];
        if (inode.HasInlineData)
        {
            var data = Inline.Read(inode);
            if (inode.Size > (ulong)data.Length) throw Ext4Exception.Corrupted($"inode {inode.Number}: inline size {inode.Size} exceeds its data");
            data.AsSpan((int)offset, count).CopyTo(dest);
            return count;
        }
        int bs = Super.BlockSize;
        var mapper = BlockMapper.For(this, inode);
        long pos = offset;
        while (!dest.IsEmpty)
        {
            ulong lblk = (ulong)(pos / bs);
            int inBlock = (int)(pos % bs);
            ulong wantBlocks = (ulong)((inBlock + dest.Length + bs - 1) / bs);
            var run = mapper.Map(lblk, wantBlocks);
            int n = (int)Math.Min((long)dest.Length, (long)run.Length * bs - inBlock);
            if (run.IsHole || run.Unwritten) dest[..n].Clear();
            else Device.Read((long)run.Physical * bs + inBlock, dest[..n]);
            dest = dest[n..];
            pos += n;
        }
        return count;
    }

    /// <summary>The target of a symbolic link: fast (in i_block), inline, or in data blocks.</summary>
    public byte[] ReadLinkTarget(Inode inode)
    {
        if (!inode.IsSymlink) throw new Ext4Exception(Errno.EINVAL, "not a symbolic link");
        if (inode.Size == 0 || inode.Size >= 4096) throw Ext4Exception.Corrupted($"symlink inode {inode.Number} has size {inode.Size}");
        if (!inode.HasInlineData && IsFastSymlink(inode))
        {
            if (inode.Size >= Inode.BlockArraySize) throw Ext4Exception.Corrupted($"fast symlink inode {inode.Number} has size {inode.Size}");
            return inode.BlockArray[..(int)inode.Size].ToArray();
        }
        var target = new byte[inode.Size];
        if (ReadData(inode, target, 0) != target.Length) throw Ext4Exception.Corrupted($"symlink inode {inode.Number} is short");
        return target;
    }

    // Fast symlinks keep the target in i_block and own no data blocks (only an xattr block, maybe).
    private bool IsFastSymlink(Inode inode)
    {
        ulong eaSectors = inode.FileAcl != 0 ? (ulong)(Super.ClusterSize / 512) : 0;
        return inode.Sectors == eaSectors;
    }
}
