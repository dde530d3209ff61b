using System.Text;

namespace Untorn.Tests;

/// <summary>What a file should hold: its bytes (zeros where it was never written) and its size.</summary>
public sealed class ModelFile
{
    private byte[] _buf = [];

    public long Length { get; private set; }
    /// <summary>Changed by the workload (untouched fixture files are only sampled by debugfs).</summary>
    public bool Touched { get; set; }

    public ReadOnlySpan<byte> Content => _buf.AsSpan(0, (int)Length);

    /// <summary>How far space may be allocated (writes, reservations past the size); bounds the workload's use of the image.</summary>
    public long Footprint { get; private set; }

    public void Reserved(long end) => Footprint = Math.Max(Footprint, end);


    public void Write(long offset, ReadOnlySpan<byte> data)
    {
        Grow(offset + data.Length);
        data.CopyTo(_buf.AsSpan((int)offset));
        Length = Math.Max(Length, offset + data.Length);
        Footprint = Math.Max(Footprint, Length);
        Touched = true;
    }

    /// <summary>truncate: a shrink forgets the tail, so growing again reads zeros there.</summary>
    public void SetLength(long length)
    {
        if (length < Length) Array.Clear(_buf, (int)length, (int)(Length - length));
        Grow(length);
        Footprint = length < Length ? length : Math.Max(Footprint, length);
        Length = length;
        Touched = true;
    }

    /// <summary>Zeroes [offset, offset+length) inside the file (punch, zero range).</summary>
    public void Zero(long offset, long length)
    {
        long end = Math.Min(offset + length, Length);
        if (end > offset) Array.Clear(_buf, (int)offset, (int)(end - offset));
        Touched = true;
    }

    private void Grow(long n)
    {
        if (n <= _buf.Length) return;
        Array.Resize(ref _buf, (int)Math.Max(n, Math.Min(_buf.Length * 2L, 64L << 20)));
    }
}

/// <summary>
/// The expected namespace: directories with their entry names, files (hard links share one
/// <see cref="ModelFile"/>) and symlinks with their targets. Paths are absolute, "/" separated.
/// </summary>
public sealed class TreeModel
{
    public Dictionary<string, ModelFile> Files { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, string> Symlinks { get; } = new(StringComparer.Ordinal);
    /// <summary>Every directory and the names in it.</summary>
    public Dictionary<string, HashSet<string>> Dirs { get; } = new(StringComparer.Ordinal) { ["/"] = new(StringComparer.Ordinal) };

    public static string Join(string dir, string name) => dir == "/" ? "/" + name : dir + "/" + name;
    public static string ParentOf(string path) => path.LastIndexOf('/') is var i and > 0 ? path[..i] : "/";
    public static string NameOf(string path) => path[(path.LastIndexOf('/') + 1)..];

    /// <summary>The tree an image was made from (mke2fs -d), plus mke2fs's lost+found.</summary>
    public static TreeModel FromDirectory(string root)
    {
        var m = new TreeModel();
        m.AddDir("/lost+found");
        void Walk(string host, string path)
        {
            foreach (var e in new DirectoryInfo(host).EnumerateFileSystemInfos().OrderBy(e => e.Name, StringComparer.Ordinal))
            {
                var p = Join(path, e.Name);
                if (e.LinkTarget != null) m.AddSymlink(p, e.LinkTarget);
                else if (e is DirectoryInfo) { m.AddDir(p); Walk(e.FullName, p); }
                else
                {
                    var f = new ModelFile();
                    f.Write(0, File.ReadAllBytes(e.FullName));
                    f.Touched = false;
                    m.AddFile(p, f);
                }
            }
        }
        Walk(root, "/");
        return m;
    }

    public bool Exists(string path) => Files.ContainsKey(path) || Symlinks.ContainsKey(path) || Dirs.ContainsKey(path);

    public void AddFile(string path, ModelFile f) { Files[path] = f; Dirs[ParentOf(path)].Add(NameOf(path)); }
    public void AddSymlink(string path, string target) { Symlinks[path] = target; Dirs[ParentOf(path)].Add(NameOf(path)); }
    public void AddDir(string path) { Dirs[path] = new(StringComparer.Ordinal); Dirs[ParentOf(path)].Add(NameOf(path)); }

    /// <summary>Removes a file, symlink or (empty) directory name.</summary>
    public void Remove(string path)
    {
        if (!Files.Remove(path) && !Symlinks.Remove(path))
        {
            if (Dirs[path].Count != 0) throw new InvalidOperationException("model: removing a non-empty directory " + path);
            Dirs.Remove(path);
        }
        Dirs[ParentOf(path)].Remove(NameOf(path));
    }

    /// <summary>rename(2) in the model: the target (if any) is replaced; a directory moves with everything below it.</summary>
    public void Rename(string from, string to)
    {
        if (Exists(to)) Remove(to);
        if (Files.Remove(from, out var f)) AddFile(to, f);
        else if (Symlinks.Remove(from, out var t)) AddSymlink(to, t);
        else
        {
            var moved = Dirs.Keys.Where(d => d == from || d.StartsWith(from + "/", StringComparison.Ordinal)).ToList();
            string Move(string p) => to + p[from.Length..];
            foreach (var d in moved.OrderBy(d => d.Length)) { var names = Dirs[d]; Dirs.Remove(d); Dirs[Move(d)] = names; }
            foreach (var p in Files.Keys.Where(p => p.StartsWith(from + "/", StringComparison.Ordinal)).ToList()) { Files[Move(p)] = Files[p]; Files.Remove(p); }
            foreach (var p in Symlinks.Keys.Where(p => p.StartsWith(from + "/", StringComparison.Ordinal)).ToList()) { Symlinks[Move(p)] = Symlinks[p]; Symlinks.Remove(p); }
            Dirs[ParentOf(to)].Add(NameOf(to));
        }
        Dirs[ParentOf(from)].Remove(NameOf(from));
    }

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    /// <summary>The engine reads one file as the model says (size and bytes).</summary>
    public void AssertEngineReads(Ext4Fs fs, string path, string label)
    {
        var want = Files[path].Content;
        int fd = fs.Open(B(path), OpenFlags.RdOnly, 0);
        try
        {
            Assert.Equal((ulong)want.Length, fs.Statx(fd, [], AtFlags.EmptyPath, StatxMask.BasicStats).Size);
            var got = new byte[want.Length + 1];
            int n = fs.Pread(fd, got, 0);
            Assert.True(n == want.Length && got.AsSpan(0, n).SequenceEqual(want), $"{label}: the engine reads {path} differently ({n} of {want.Length} bytes)");
        }
        finally { fs.Close(fd); }
    }

    /// <summary>
    /// The closed image against the model with the oracles: e2fsck -fn clean; debugfs dumps every
    /// file (or every touched one and a sample of the others) equal to the model, and its leaf
    /// extents equal untorn's fiemap; as root the kernel, through a read-only loop mount, lists every directory
    /// with exactly the model's names, reads every file byte for byte and every symlink's target.
    /// </summary>
    public void AssertImageMatches(string image, string label, Random rng, int untouchedSample = int.MaxValue)
    {
        Oracles.AssertFsckClean(image, label);
        var paths = Files.Where(kv => kv.Value.Touched).Select(kv => kv.Key)
            .Concat(Files.Where(kv => !kv.Value.Touched).Select(kv => kv.Key).OrderBy(_ => rng.Next()).Take(untouchedSample)).ToList();
        var dumped = Oracles.DebugfsDumpAll(image, paths);
        using (var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true }))
        {
            int bs = fs.Super.BlockSize;
            foreach (var p in paths)
            {
                var (data, extents) = dumped[p];
                Assert.True(data != null && data.AsSpan().SequenceEqual(Files[p].Content), $"{label}: debugfs dumps {p} differently from the model ({data?.Length} vs {Files[p].Length} bytes)");
                int fd = fs.Open(B(p), OpenFlags.RdOnly, 0);
                var map = fs.Fiemap(fd, 0, 1L << 42);
                fs.Close(fd);
                var ours = map.Select(e => new Oracles.DebugfsExtent(e.Logical / (ulong)bs, e.Physical / (ulong)bs, e.Length / (ulong)bs, (e.Flags & FileExtent.FlagUnwritten) != 0)).ToList();
                Assert.True(ours.SequenceEqual(extents), $"{label}: {p}: fiemap [{string.Join(", ", ours)}] but debugfs [{string.Join(", ", extents)}]");
            }
            foreach (var (p, t) in Symlinks)
                Assert.Equal(t, Encoding.UTF8.GetString(fs.ReadLink(AtFlags.Root, B(p))));
        }
        AssertKernelReads(image, label);
    }

    private void AssertKernelReads(string image, string label)
    {
        using var m = Oracles.LoopMount.TryMount(image, readOnly: true, out var reason);
        if (m == null)
        {
            Oracles.Note($"{label}: the kernel's reads not checked ({reason})");
            return;
        }
        foreach (var (d, names) in Dirs)
        {
            var got = new DirectoryInfo(m.Dir + d).EnumerateFileSystemInfos().Select(e => e.Name).ToHashSet(StringComparer.Ordinal);
            Assert.True(got.SetEquals(names), $"{label}: the kernel lists {d} as [{string.Join(", ", got.Except(names).Take(5))}] more and [{string.Join(", ", names.Except(got).Take(5))}] missing");
        }
        foreach (var (p, f) in Files)
            Assert.True(File.ReadAllBytes(m.Dir + p).AsSpan().SequenceEqual(f.Content), $"{label}: the kernel reads {p} differently");
        foreach (var (p, t) in Symlinks)
            Assert.Equal(t, new FileInfo(m.Dir + p).LinkTarget);
    }
}
