namespace Untorn;

// create, mkdir, unlink, rmdir (fs/ext4/namei.c): each one metadata handle — inode and bitmap,
// directory entry, parent times and link count — so it is all in one journal transaction.
public sealed partial class Ext4Fs
{
    /// <summary>Creates a regular file (O_CREAT); returns its inode number, or the existing one unless exclusive.</summary>
    public uint Create(ReadOnlySpan<byte> path, uint mode, bool exclusive)
    {
        var p = path.ToArray();
        return RetryAfterCommit(() => MakeNode(p, (ushort)(InodeMode.Regular | (mode & 0xFFF)), exclusive));
    }

    /// <summary>mkdir(2).</summary>
    public void Mkdir(ReadOnlySpan<byte> path, uint mode)
    {
        var p = path.ToArray();
        RetryAfterCommit(() => MakeNode(p, (ushort)(InodeMode.Dir | (mode & 0xFFF)), exclusive: true));
    }

    /// <summary>unlink(2): the file's space is freed now, or at the last close when it is still open (an orphan until then, see Orphan.cs).</summary>
    public void Unlink(ReadOnlySpan<byte> path) => RemoveNode(path, dir: false);

    /// <summary>rmdir(2).</summary>
    public void Rmdir(ReadOnlySpan<byte> path) => RemoveNode(path, dir: true);

    private uint MakeNode(ReadOnlySpan<byte> path, ushort mode, bool exclusive)
    {
        var (parentPath, name) = SplitLast(path);
        bool isDir = (mode & InodeMode.TypeMask) == InodeMode.Dir;
        var ws = Writer;
        using var h = ws.Transactions.Start();
        var parentInode = Namei.Resolve(this, ReadInode(RootIno), parentPath, followLast: true);
        if (!parentInode.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "parent is not a directory");
        uint existing = LookupIn(parentInode, name);
        if (existing != 0)
        {
            if (exclusive || isDir) throw new Ext4Exception(Errno.EEXIST, "file exists");
            h.Complete();
            return existing;
        }
        CheckWritableDir(parentInode);
        if (isDir && parentInode.LinksCount >= 65000 && !Super.HasDirNlink)
            throw new Ext4Exception(Errno.EMLINK, "too many links");

        uint ino = InodeBitmaps.Allocate(h, parentInode.Number, isDir);
        Superblock.AddFreeCounts(h, Super.BlockSize, 0, -1);
        var inode = InodeBuffer.CreateNew(this, ino, mode);
        new ExtentTree(this, h, inode, ws.Allocator).InitEmpty();
        var parent = InodeBuffer.Load(this, parentInode.Number);
        if (isDir)
        {
            inode.LinksCount = 2;
            new DirWriter(this, h, inode, ws.Allocator).InitEmpty(parent.Number);
            // dir_nlink: past 65000 subdirectories the parent's count sticks at 1 ("many").
            parent.LinksCount = parent.LinksCount >= 65000 || parent.LinksCount == 1 ? (ushort)1 : (ushort)(parent.LinksCount + 1);
        }
        inode.Save(h, this);
        new DirWriter(this, h, parent, ws.Allocator).Add(name, ino, DirFileType.FromMode(mode));
        Touch(parent);
        parent.Save(h, this);
        h.Complete();
        return ino;
    }

    private void RemoveNode(ReadOnlySpan<byte> path, bool dir)
    {
        var (parentPath, name) = SplitLast(path);
        var ws = Writer;
        using var h = ws.Transactions.Start();
        var parentInode = Namei.Resolve(this, ReadInode(RootIno), parentPath, followLast: true);
        if (!parentInode.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "parent is not a directory");
        uint ino = LookupIn(parentInode, name);
        if (ino == 0) throw new Ext4Exception(Errno.ENOENT, "no such file or directory");
        var target = InodeBuffer.Load(this, ino);
        bool isDir = target.Parsed.IsDir;
        if (dir && !isDir) throw new Ext4Exception(Errno.ENOTDIR, "not a directory");
        if (!dir && isDir) throw new Ext4Exception(Errno.EISDIR, "is a directory");
        CheckWritableDir(parentInode);
        if (isDir && !new DirWriter(this, h, target, ws.Allocator).IsEmpty())
            throw new Ext4Exception(Errno.ENOTEMPTY, "directory not empty");
        var parent = InodeBuffer.Load(this, parentInode.Number);
        new DirWriter(this, h, parent, ws.Allocator).Remove(name);
        if (isDir && parent.LinksCount > 2) parent.LinksCount--;
        Touch(parent);
        parent.Save(h, this);

        target.LinksCount = isDir ? (ushort)0 : (ushort)(target.LinksCount - 1);
        target.SetTime(0x0C, 0x84, DateTimeOffset.UtcNow);
        if (target.LinksCount == 0 && !Files.IsOpen(ino)) FreeInode(h, ws, target, isDir);
        else
        {
            if (target.LinksCount == 0) OrphanAdd(h, target);
            target.Save(h, this);
        }
        h.Complete();
        if (target.LinksCount == 0) ReleaseIfUnlinked(ino); // its last descriptor may have closed meanwhile
    }

    /// <summary>link(2): a second name for a file (not a directory).</summary>
    public void Link(ReadOnlySpan<byte> oldPath, ReadOnlySpan<byte> newPath)
    {
        var (o, n) = (oldPath.ToArray(), newPath.ToArray());
        RetryAfterCommit(() => { LinkOnce(o, n); return 0; });
    }

    private void LinkOnce(ReadOnlySpan<byte> oldPath, ReadOnlySpan<byte> newPath)
    {
        var (parentPath, name) = SplitLast(newPath);
        var oldBytes = oldPath.ToArray();
        var ws = Writer;
        using var h = ws.Transactions.Start();
        var target = Namei.Resolve(this, ReadInode(RootIno), oldBytes, followLast: false);
        if (target.IsDir) throw new Ext4Exception(Errno.EPERM, "hard links to directories are not allowed");
        if (target.LinksCount >= 65000) throw new Ext4Exception(Errno.EMLINK, "too many links");
        var parentInode = Namei.Resolve(this, ReadInode(RootIno), parentPath, followLast: true);
        if (!parentInode.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "parent is not a directory");
        if (LookupIn(parentInode, name) != 0) throw new Ext4Exception(Errno.EEXIST, "file exists");
        CheckWritableDir(parentInode);
        var parent = InodeBuffer.Load(this, parentInode.Number);
        new DirWriter(this, h, parent, ws.Allocator).Add(name, target.Number, DirFileType.FromMode(target.Mode));
        Touch(parent);
        parent.Save(h, this);
        var inode = InodeBuffer.Load(this, target.Number);
        inode.LinksCount++;
        inode.SetTime(0x0C, 0x84, DateTimeOffset.UtcNow);
        inode.Save(h, this);
        h.Complete();
    }

    /// <summary>symlink(2): targets under 60 bytes live in the inode (fast), longer ones in a data block.</summary>
    public void Symlink(ReadOnlySpan<byte> target, ReadOnlySpan<byte> linkPath)
    {
        var (t, l) = (target.ToArray(), linkPath.ToArray());
        RetryAfterCommit(() => { SymlinkOnce(t, l); return 0; });
    }

    private void SymlinkOnce(ReadOnlySpan<byte> target, ReadOnlySpan<byte> linkPath)
    {
        if (target.Length == 0) throw new Ext4Exception(Errno.ENOENT, "empty symlink target");
        if (target.Length >= Super.BlockSize) throw new Ext4Exception(Errno.ENAMETOOLONG, "symlink target longer than a block");
        var (parentPath, name) = SplitLast(linkPath);
        var targetBytes = target.ToArray();
        var ws = Writer;
        using var h = ws.Transactions.Start();
        var parentInode = Namei.Resolve(this, ReadInode(RootIno), parentPath, followLast: true);
        if (!parentInode.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "parent is not a directory");
        if (LookupIn(parentInode, name) != 0) throw new Ext4Exception(Errno.EEXIST, "file exists");
        CheckWritableDir(parentInode);
        uint ino = InodeBitmaps.Allocate(h, parentInode.Number, isDir: false);
        Superblock.AddFreeCounts(h, Super.BlockSize, 0, -1);
        var inode = InodeBuffer.CreateNew(this, ino, (ushort)(InodeMode.Symlink | 0x1FF));
        inode.Size = (ulong)targetBytes.Length;
        if (targetBytes.Length < Inode.BlockArraySize)
            targetBytes.CopyTo(inode.BlockArray); // fast symlink: no blocks, no extent flag
        else
        {
            var tree = new ExtentTree(this, h, inode, ws.Allocator);
            tree.InitEmpty();
            var mapped = new ClusterMap(this, h, inode, tree, ws.Allocator).MapHole(0, 1, unwritten: false, 0);
            var block = new byte[Super.BlockSize];
            targetBytes.CopyTo(block, 0);
            Device.Write((long)mapped.Physical * Super.BlockSize, block);
        }
        inode.Save(h, this);
        var parent = InodeBuffer.Load(this, parentInode.Number);
        new DirWriter(this, h, parent, ws.Allocator).Add(name, ino, DirFileType.Symlink);
        Touch(parent);
        parent.Save(h, this);
        h.Complete();
    }

    /// <summary>rename(2), replacing an existing target the way the kernel does (a file by a file, an empty directory by a directory).</summary>
    public void Rename(ReadOnlySpan<byte> oldPath, ReadOnlySpan<byte> newPath)
    {
        var (o, n) = (oldPath.ToArray(), newPath.ToArray());
        RetryAfterCommit(() => { RenameOnce(o, n); return 0; });
    }

    private void RenameOnce(ReadOnlySpan<byte> oldPath, ReadOnlySpan<byte> newPath)
    {
        var (oldParentPath, oldName) = SplitLast(oldPath);
        var (newParentPath, newName) = SplitLast(newPath);
        var ws = Writer;
        using var h = ws.Transactions.Start();
        var root = ReadInode(RootIno);
        var oldParentInode = Namei.Resolve(this, root, oldParentPath, followLast: true);
        var newParentInode = Namei.Resolve(this, root, newParentPath, followLast: true);
        if (!oldParentInode.IsDir || !newParentInode.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "parent is not a directory");
        uint ino = LookupIn(oldParentInode, oldName);
        if (ino == 0) throw new Ext4Exception(Errno.ENOENT, "no such file or directory");
        CheckWritableDir(oldParentInode);
        CheckWritableDir(newParentInode);
        var moving = InodeBuffer.Load(this, ino);
        bool isDir = moving.Parsed.IsDir;
        uint existing = LookupIn(newParentInode, newName);
        if (existing == ino) { h.Complete(); return; } // the same file: nothing to do
        if (isDir)
            for (uint a = newParentInode.Number; ; )
            {
                if (a == ino) throw new Ext4Exception(Errno.EINVAL, "a directory cannot move into itself");
                if (a == RootIno) break;
                a = ParentOf(ReadInode(a));
            }
        bool sameParent = oldParentInode.Number == newParentInode.Number;
        var newParent = InodeBuffer.Load(this, newParentInode.Number);
        var oldParent = sameParent ? newParent : InodeBuffer.Load(this, oldParentInode.Number);
        var newDir = new DirWriter(this, h, newParent, ws.Allocator);
        if (existing != 0)
        {
            var victim = InodeBuffer.Load(this, existing);
            bool victimDir = victim.Parsed.IsDir;
            if (isDir && !victimDir) throw new Ext4Exception(Errno.ENOTDIR, "not a directory");
            if (!isDir && victimDir) throw new Ext4Exception(Errno.EISDIR, "is a directory");
            if (victimDir && !new DirWriter(this, h, victim, ws.Allocator).IsEmpty()) throw new Ext4Exception(Errno.ENOTEMPTY, "directory not empty");
            newDir.Remove(newName);
            if (victimDir && newParent.LinksCount > 2) newParent.LinksCount--;
            victim.LinksCount = victimDir ? (ushort)0 : (ushort)(victim.LinksCount - 1);
            victim.SetTime(0x0C, 0x84, DateTimeOffset.UtcNow);
            if (victim.LinksCount == 0 && !Files.IsOpen(existing)) FreeInode(h, ws, victim, victimDir);
            else
            {
                if (victim.LinksCount == 0) OrphanAdd(h, victim);
                victim.Save(h, this);
            }
        }
        newDir.Add(newName, ino, DirFileType.FromMode(moving.Mode));
        new DirWriter(this, h, oldParent, ws.Allocator).Remove(oldName);
        if (isDir && !sameParent)
        {
            new DirWriter(this, h, moving, ws.Allocator).SetParent(newParent.Number);
            if (oldParent.LinksCount > 2) oldParent.LinksCount--;
            newParent.LinksCount = newParent.LinksCount == 1 || newParent.LinksCount >= 65000 ? (ushort)1 : (ushort)(newParent.LinksCount + 1);
        }
        moving.SetTime(0x0C, 0x84, DateTimeOffset.UtcNow);
        moving.Save(h, this);
        Touch(newParent);
        newParent.Save(h, this);
        if (!sameParent)
        {
            Touch(oldParent);
            oldParent.Save(h, this);
        }
        h.Complete();
        if (existing != 0) ReleaseIfUnlinked(existing); // its last descriptor may have closed meanwhile
    }

    // ext4_evict_inode: the blocks go back (usable after the commit), dtime is set, the bitmap bit clears.
    private void FreeInode(TransactionManager.Handle h, WriteState ws, InodeBuffer inode, bool isDir)
    {
        if (inode.Parsed.HasExtents)
        {
            var tree = new ExtentTree(this, h, inode, ws.Allocator);
            new ClusterMap(this, h, inode, tree, ws.Allocator).Free(tree.Remove(0, 1UL << 32));
        }
        ws.Allocator.Mballoc.DiscardPreallocations(inode.Number);
        inode.Size = 0;
        inode.Sectors = 0;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(inode.Raw.AsSpan(0x14), (uint)DateTimeOffset.UtcNow.ToUnixTimeSeconds());
        inode.Save(h, this);
        InodeBitmaps.Mark(h, inode.Number, used: false, isDir);
        Superblock.AddFreeCounts(h, Super.BlockSize, 0, 1);
    }

    // ".." is the second entry of block 0 in linear and indexed directories alike ("." takes 12 bytes).
    private uint ParentOf(Inode dir)
    {
        if (dir.HasInlineData) return System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(dir.BlockArray);
        var run = BlockMapper.For(this, dir).Map(0, 1);
        if (run.IsHole) throw Ext4Exception.Corrupted($"directory {dir.Number} has no block 0");
        var b = new byte[16];
        Device.Read((long)run.Physical * Super.BlockSize, b);
        uint parent = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(12));
        if (parent == 0 || parent > Super.InodesCount) throw Ext4Exception.Corrupted($"directory {dir.Number}: bad '..'");
        return parent;
    }

    private void CheckWritableDir(Inode dir)
    {
        if (dir.HasInlineData || !dir.HasExtents)
            throw new Ext4Exception(Errno.EOPNOTSUPP, "changing inline or indirect-mapped directories is not supported yet");
    }

    private uint LookupIn(Inode dir, byte[] name) => Namei.Lookup(this, dir, name);

    private static void Touch(InodeBuffer dir)
    {
        var now = DateTimeOffset.UtcNow;
        dir.SetTime(0x10, 0x88, now);
        dir.SetTime(0x0C, 0x84, now);
    }

    // "a/b/c" → ("a/b", "c"); the last component must be a real name.
    private static (byte[] Parent, byte[] Name) SplitLast(ReadOnlySpan<byte> path)
    {
        var p = path.ToArray().AsSpan();
        while (p.Length > 1 && p[^1] == (byte)'/') p = p[..^1];
        int slash = p.LastIndexOf((byte)'/');
        var name = p[(slash + 1)..].ToArray();
        var parent = slash < 0 ? "/"u8.ToArray() : slash == 0 ? "/"u8.ToArray() : p[..slash].ToArray();
        if (name.Length == 0 || name is [(byte)'.'] or [(byte)'.', (byte)'.'])
            throw new Ext4Exception(name.Length == 0 ? Errno.ENOENT : Errno.EINVAL, "invalid final path component");
        if (name.Length > 255) throw new Ext4Exception(Errno.ENAMETOOLONG, "name too long");
        return (parent, name);
    }
}
