namespace Untorn;

/// <summary>
/// Path resolution (fs/namei.c's walk): components looked up one directory at a time, through the
/// htree index when the directory has one, symbolic links followed with the kernel's limit of 40.
/// Paths are byte strings; "/" separates components and an absolute path starts at the image root.
/// </summary>
internal static class Namei
{
    public const int NameMax = 255, PathMax = 4096, MaxSymlinks = 40;

    /// <summary>Resolves <paramref name="path"/> starting in directory <paramref name="start"/>.</summary>
    public static Inode Resolve(Ext4Fs fs, Inode start, ReadOnlySpan<byte> path, bool followLast)
    {
        if (path.IsEmpty) throw new Ext4Exception(Errno.ENOENT, "empty path");
        if (path.Length >= PathMax) throw new Ext4Exception(Errno.ENAMETOOLONG, "path too long");
        if (path.IndexOf((byte)0) >= 0) throw new Ext4Exception(Errno.EINVAL, "path contains NUL");

        // Remaining components, next one last; a trailing "/" demands a directory (and follows links).
        var pending = new Stack<byte[]>();
        bool mustBeDir = path[^1] == (byte)'/';
        Push(pending, path);
        var current = path[0] == (byte)'/' ? fs.ReadInode(Ext4Fs.RootIno) : start;
        int links = 0;
        while (pending.Count > 0)
        {
            var name = pending.Pop();
            if (!current.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "a path component is not a directory");
            if (name.Length > NameMax) throw new Ext4Exception(Errno.ENAMETOOLONG, "file name too long");
            if (name is [(byte)'.']) continue;
            uint ino = Lookup(fs, current, name);
            if (ino == 0) throw new Ext4Exception(Errno.ENOENT, $"'{System.Text.Encoding.UTF8.GetString(name)}' not found");
            var next = fs.ReadLinkedInode(ino);
            bool last = pending.Count == 0;
            if (next.IsSymlink && (!last || followLast || mustBeDir))
            {
                if (++links > MaxSymlinks) throw new Ext4Exception(Errno.ELOOP, "too many levels of symbolic links");
                var target = fs.ReadLinkTarget(next);
                Push(pending, target);
                if (target[0] == (byte)'/') current = fs.ReadInode(Ext4Fs.RootIno);
                continue;
            }
            current = next;
        }
        if (mustBeDir && !current.IsDir) throw new Ext4Exception(Errno.ENOTDIR, "trailing slash on a non-directory");
        return current;
    }

    /// <summary>The inode number <paramref name="name"/> names in <paramref name="dir"/>, or 0.</summary>
    public static uint Lookup(Ext4Fs fs, Inode dir, ReadOnlySpan<byte> name)
    {
        if (dir.IsIndexedDir && !dir.HasInlineData && (fs.Super.FeatureCompat & Features.CompatDirIndex) != 0)
        {
            try { return DxDir.Lookup(fs, dir, name); }
            catch (DxDir.BadIndexException) { /* ext4_find_entry falls back to a linear scan */ }
        }
        return Dir.LookupLinear(fs, dir, name);
    }

    private static void Push(Stack<byte[]> pending, ReadOnlySpan<byte> path)
    {
        var parts = new List<byte[]>();
        foreach (var range in path.Split((byte)'/'))
            if (range.End.GetOffset(path.Length) > range.Start.GetOffset(path.Length))
                parts.Add(path[range].ToArray());
        for (int i = parts.Count - 1; i >= 0; i--) pending.Push(parts[i]);
    }
}
