using System.Text;

namespace Untorn.Tests;

/// <summary>
/// A seeded random workload of namespace and file operations run on untorn over a recording
/// device, with a model of the tree after every operation: states[k] is the tree after the first
/// k operations. A crash state must recover to some states[k] with k at least the last operation
/// made durable; file bytes may differ only where a later operation wrote in place (data goes to
/// the device before the metadata that would make it visible, as ordered mode allows).
/// </summary>
internal sealed class CrashWorkload
{
    public sealed class Node(int id, char kind)
    {
        public int Id { get; } = id;
        public char Kind { get; } = kind; // f file, d directory, l symlink
        public byte[] Data { get; init; } = [];
        public string Target { get; init; } = "";
    }

    /// <summary>Bytes an operation may have put on the device in place, visible before it commits.</summary>
    public sealed record InPlace(int Op, int Node, long Offset, byte[] Data);

    public List<Dictionary<string, Node>> States { get; } = [];
    public List<string> Fingerprints { get; } = [];
    public List<string> OpNames { get; } = [];
    /// <summary>Device writes issued when operation k (1-based) was known durable; int.MaxValue if never.</summary>
    public List<int> DurableAt { get; } = [0];
    public List<InPlace> InPlaceWrites { get; } = [];

    private readonly Random _rng;
    private readonly Ext4Fs _fs;
    private readonly RecordingBlockDevice _rec;
    private readonly int _blockSize;
    private Dictionary<string, Node> _cur;
    private int _nextId = 1, _nextName;

    private CrashWorkload(Ext4Fs fs, RecordingBlockDevice rec, int seed)
    {
        _fs = fs;
        _rec = rec;
        _rng = new Random(seed);
        _blockSize = fs.Super.BlockSize;
        _cur = Load(fs);
        Record("start");
    }

    // The model starts as the image's tree (names, kinds, hard links, bytes, targets).
    private Dictionary<string, Node> Load(Ext4Fs fs)
    {
        var tree = new Dictionary<string, Inode>(StringComparer.Ordinal);
        Walk(fs, Ext4Fs.RootIno, "", tree);
        var nodes = new Dictionary<uint, Node>();
        var model = new Dictionary<string, Node>(StringComparer.Ordinal) { [""] = new Node(_nextId++, 'd') };
        foreach (var (path, inode) in tree)
        {
            if (!nodes.TryGetValue(inode.Number, out var node))
            {
                var data = new byte[inode.IsRegular ? inode.Size : 0];
                fs.ReadData(inode, data, 0);
                nodes[inode.Number] = node = new Node(_nextId++, inode.IsDir ? 'd' : inode.IsSymlink ? 'l' : 'f')
                {
                    Data = data,
                    Target = inode.IsSymlink ? Encoding.UTF8.GetString(fs.ReadLinkTarget(inode)) : "",
                };
            }
            model[path] = node;
        }
        return model;
    }

    /// <summary>Every name below the directory (lost+found left out), with its inode.</summary>
    public static void Walk(Ext4Fs fs, uint dirIno, string path, Dictionary<string, Inode> tree)
    {
        foreach (var e in Dir.Read(fs, fs.ReadInode(dirIno), 0, int.MaxValue))
        {
            var name = e.NameString;
            if (name is "." or ".." || (path.Length == 0 && name == "lost+found")) continue;
            var inode = fs.ReadInode(e.Inode);
            tree[path + "/" + name] = inode;
            if (inode.IsDir) Walk(fs, e.Inode, path + "/" + name, tree);
        }
    }

    /// <summary>Runs <paramref name="ops"/> random operations on a fresh filesystem over <paramref name="rec"/>.</summary>
    public static CrashWorkload Run(RecordingBlockDevice rec, int seed, int ops)
    {
        using var fs = Ext4Fs.Open(rec, new OpenOptions { CommitInterval = TimeSpan.Zero });
        var w = new CrashWorkload(fs, rec, seed);
        for (int i = 0; i < ops; i++) w.Step();
        w.Sync("sync at end");
        return w;
    }

    private static byte[] B(string path) => Encoding.UTF8.GetBytes(path);

    private void Record(string what)
    {
        States.Add(_cur);
        Fingerprints.Add(Fingerprint(_cur.Select(kv => (kv.Key, kv.Value.Kind, (long)kv.Value.Id, kv.Value.Kind == 'f' ? kv.Value.Data.Length.ToString() : kv.Value.Target))));
        OpNames.Add(what);
        if (States.Count > 1) DurableAt.Add(int.MaxValue);
    }

    /// <summary>
    /// Names, kinds, sizes or targets, and which names share an inode (as the smallest name of its
    /// group): equal for the model and a recovered image exactly when their namespaces agree.
    /// </summary>
    public static string Fingerprint(IEnumerable<(string Path, char Kind, long Id, string Extra)> entries)
    {
        var list = entries.Where(e => e.Path.Length > 0).ToList();
        var group = list.GroupBy(e => e.Id).ToDictionary(g => g.Key, g => g.Select(e => e.Path).Min(StringComparer.Ordinal)!);
        var sb = new StringBuilder();
        foreach (var e in list.OrderBy(e => e.Path, StringComparer.Ordinal))
            sb.Append(e.Path).Append('|').Append(e.Kind).Append('|').Append(e.Extra).Append('|').Append(group[e.Id]).Append('\n');
        return sb.ToString();
    }

    private void Durable()
    {
        for (int k = DurableAt.Count - 1; k >= 0 && DurableAt[k] == int.MaxValue; k--) DurableAt[k] = _rec.WriteCount;
    }

    // Some names are long, so directories grow past a block (and get an htree index) within a workload.
    private string NewName(string dir) => $"{dir}/n{_nextName++}" + (_rng.Next(3) == 0 ? new string('x', _rng.Next(40, 240)) : "");
    private List<string> Of(char kind) => _cur.Where(kv => kv.Value.Kind == kind).Select(kv => kv.Key).ToList();
    private T Pick<T>(List<T> list) => list[_rng.Next(list.Count)];
    private static string Parent(string path) => path[..path.LastIndexOf('/')];

    private void Step()
    {
        var files = Of('f');
        var dirs = Of('d');
        int r = _rng.Next(100);
        if (files.Count < 3 || r < 10) Create(Pick(dirs));
        else if (r < 16 && dirs.Count < 8) Mkdir(Pick(dirs));
        else if (r < 22) Unlink(Pick(files.Concat(Of('l')).ToList()));
        else if (r < 26) Rmdir(dirs);
        else if (r < 36) Rename(files, dirs);
        else if (r < 41) Link(Pick(files), Pick(dirs));
        else if (r < 45) Symlink(Pick(dirs));
        else if (r < 52) Truncate(Pick(files));
        else if (r < 60) Fallocate(Pick(files));
        else if (r < 64) AllocAligned(Pick(files));
        else if (r < 84) Write(Pick(files), dsync: r < 66);
        else if (r < 92) Fsync(Pick(files));
        else Sync("sync");
    }

    private void Change(Action<Dictionary<string, Node>> edit, string what)
    {
        var next = new Dictionary<string, Node>(_cur, StringComparer.Ordinal);
        edit(next);
        _cur = next;
        Record(what);
    }

    // Replaces every name of node `old` (its hard links) with `updated`.
    private static void Replace(Dictionary<string, Node> tree, Node old, Node updated)
    {
        foreach (var k in tree.Where(kv => ReferenceEquals(kv.Value, old)).Select(kv => kv.Key).ToList()) tree[k] = updated;
    }

    private void Create(string dir)
    {
        var path = NewName(dir);
        _fs.Create(B(path), 0x1A4, exclusive: true);
        Change(t => t[path] = new Node(_nextId++, 'f'), $"create {path}");
    }

    private void Mkdir(string dir)
    {
        var path = NewName(dir);
        _fs.Mkdir(B(path), 0x1ED);
        Change(t => t[path] = new Node(_nextId++, 'd'), $"mkdir {path}");
    }

    private void Unlink(string path)
    {
        _fs.Unlink(B(path));
        Change(t => t.Remove(path), $"unlink {path}");
    }

    private void Rmdir(List<string> dirs)
    {
        var empty = dirs.Where(d => d.Length > 0 && !_cur.Keys.Any(k => k.StartsWith(d + "/", StringComparison.Ordinal))).ToList();
        if (empty.Count == 0) { Mkdir(""); return; }
        var path = Pick(empty);
        _fs.Rmdir(B(path));
        Change(t => t.Remove(path), $"rmdir {path}");
    }

    private void Rename(List<string> files, List<string> dirs)
    {
        bool moveDir = _rng.Next(4) == 0 && dirs.Count > 1;
        var from = moveDir ? Pick(dirs.Where(d => d.Length > 0).ToList()) : Pick(files);
        var targets = dirs.Where(d => d != from && !d.StartsWith(from + "/", StringComparison.Ordinal)).ToList();
        var to = !moveDir && files.Count > 1 && _rng.Next(3) == 0
            ? Pick(files.Where(f => !ReferenceEquals(_cur[f], _cur[from])).DefaultIfEmpty(NewName(Pick(targets))).ToList()) // over an existing file
            : NewName(Pick(targets));
        _fs.Rename(B(from), B(to));
        Change(t =>
        {
            foreach (var k in t.Keys.Where(k => k == from || k.StartsWith(from + "/", StringComparison.Ordinal)).ToList())
            {
                var node = t[k];
                t.Remove(k);
                t[to + k[from.Length..]] = node;
            }
        }, $"rename {from} {to}");
    }

    private void Link(string file, string dir)
    {
        var path = NewName(dir);
        _fs.Link(B(file), B(path));
        Change(t => t[path] = t[file], $"link {file} {path}");
    }

    private void Symlink(string dir)
    {
        var path = NewName(dir);
        var target = new string('t', _rng.Next(1, 100)) + _nextName;
        _fs.Symlink(B(target), B(path));
        Change(t => t[path] = new Node(_nextId++, 'l') { Target = target }, $"symlink {path}");
    }

    // Runs `op` on an open descriptor (closed again at once: no unlink while open here).
    private void WithFd(string path, Action<int> op)
    {
        int fd = _fs.Open(B(path), OpenFlags.RdWr, 0);
        try { op(fd); }
        finally { _fs.Close(fd); }
    }

    private static byte[] Resized(byte[] data, long size)
    {
        var d = new byte[size];
        data.AsSpan(0, (int)Math.Min(size, data.Length)).CopyTo(d);
        return d;
    }

    private void SetData(string path, byte[] data, string what) =>
        Change(t => Replace(t, t[path], new Node(t[path].Id, 'f') { Data = data }), what);

    private void ZeroInPlace(Node node, long from, long to)
    {
        if (to > from) InPlaceWrites.Add(new InPlace(States.Count, node.Id, from, new byte[to - from]));
    }

    private void Truncate(string path)
    {
        var node = _cur[path];
        long size = _rng.Next(3) == 0 ? 0 : _rng.Next(0, node.Data.Length + 3 * _blockSize);
        WithFd(path, fd => _fs.Ftruncate(fd, size));
        ZeroInPlace(node, size, node.Data.Length);
        SetData(path, Resized(node.Data, size), $"truncate {path} {size}");
    }

    private void Fallocate(string path)
    {
        var node = _cur[path];
        long off = _rng.Next(0, node.Data.Length + 2 * _blockSize), len = _rng.Next(1, 4 * _blockSize);
        int mode = _rng.Next(4) switch
        {
            0 => FallocFlags.PunchHole | FallocFlags.KeepSize,
            1 => FallocFlags.ZeroRange,
            2 => FallocFlags.ZeroRange | FallocFlags.KeepSize,
            _ => _rng.Next(2) == 0 ? 0 : FallocFlags.KeepSize,
        };
        WithFd(path, fd => _fs.Fallocate(fd, mode, off, len));
        bool keep = (mode & FallocFlags.KeepSize) != 0;
        var data = Resized(node.Data, keep ? node.Data.Length : Math.Max(node.Data.Length, off + len));
        if ((mode & (FallocFlags.PunchHole | FallocFlags.ZeroRange)) != 0)
        {
            long end = Math.Min(off + len, node.Data.Length);
            if (end > off) data.AsSpan((int)off, (int)(end - off)).Clear();
            ZeroInPlace(node, off, end);
        }
        SetData(path, data, $"fallocate {path} mode {mode} {off}+{len}");
    }

    private void AllocAligned(string path)
    {
        var node = _cur[path];
        uint align = (uint)_blockSize << _rng.Next(0, 3);
        long off = (node.Data.Length / align + _rng.Next(0, 3)) * align, len = align * _rng.Next(1, 3);
        uint flags = (uint)_rng.Next(2);
        try { WithFd(path, fd => _fs.AllocAligned(fd, off, len, align, flags)); }
        catch (Ext4Exception e) when (e.Errno == Errno.EINVAL)
        {
            Change(_ => { }, $"alloc_aligned {path} refused"); // mapped otherwise already: nothing changed
            return;
        }
        long size = flags == 0 ? Math.Max(node.Data.Length, off + len) : node.Data.Length;
        SetData(path, Resized(node.Data, size), $"alloc_aligned {path} {off}+{len} align {align}");
    }

    private void Write(string path, bool dsync)
    {
        var node = _cur[path];
        long off = _rng.Next(2) == 0 ? node.Data.Length : _rng.Next(0, node.Data.Length + 2 * _blockSize);
        var bytes = new byte[_rng.Next(1, 3 * _blockSize)];
        _rng.NextBytes(bytes);
        WithFd(path, fd => _fs.Pwritev2(fd, [new IoSegment(0, bytes)], off, dsync ? RwfFlags.DSync : 0));
        InPlaceWrites.Add(new InPlace(States.Count, node.Id, off, bytes));
        var data = Resized(node.Data, Math.Max(node.Data.Length, off + bytes.Length));
        bytes.CopyTo(data, off);
        SetData(path, data, $"pwrite{(dsync ? " RWF_DSYNC" : "")} {path} {off}+{bytes.Length}");
        if (dsync) Durable();
    }

    private void Fsync(string path)
    {
        WithFd(path, fd => _fs.Fsync(fd));
        Change(_ => { }, $"fsync {path}");
        Durable();
    }

    private void Sync(string what)
    {
        _fs.Sync();
        Change(_ => { }, what);
        Durable();
    }
}
