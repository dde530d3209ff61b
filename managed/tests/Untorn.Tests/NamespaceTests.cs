using System.Text;

namespace Untorn.Tests;

/// <summary>
/// create (O_CREAT), mkdir, unlink, rmdir and writes into new files, seeded and random, in linear
/// directories and in the 5,200-entry htree directory (forcing leaf splits), checked against a
/// model of the tree by e2fsck -fn, debugfs and — as root — the kernel walking a loop mount.
/// </summary>
public class NamespaceTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    [Theory]
    [InlineData("ext4-4k", 1)]
    [InlineData("ext4-1k", 2)]
    [InlineData("ext4-no64-nocsum", 3)]
    [InlineData("ext4-128inode", 4)]
    [InlineData("ext4-metabg", 5)]
    [InlineData("ext4-bigalloc", 6)]
    public void RandomNamespaceOps_TreeEqualsModel_FsckClean(string config, int seed)
    {
        TestImages.Require();
        var image = TestImages.CopyOf(config);
        var rng = new Random(seed);
        // model: every path we created or removed, with its expected content (null for directories)
        var files = new Dictionary<string, byte[]>();
        var dirs = new List<string> { "/", "/small", "/bigdir" };
        var created = new HashSet<string>();
        var removed = new List<string>();
        var symlinks = new Dictionary<string, string>();
        try
        {
            using (var fs = Ext4Fs.Open(image))
            {
                for (int step = 0; step < 900; step++)
                {
                    int op = rng.Next(14);
                    var parent = dirs[rng.Next(dirs.Count)];
                    string Child(string p) => (p == "/" ? "" : p) + "/n" + step + "-" + new string('x', rng.Next(0, 60));
                    if (op < 6)
                    {
                        // bigdir gets many new names, so its htree leaves split
                        var path = Child(rng.Next(2) == 0 ? "/bigdir" : parent);
                        int fd = fs.Open(B(path), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4);
                        var data = new byte[rng.Next(0, 3) == 0 ? 0 : rng.Next(1, 20000)];
                        rng.NextBytes(data);
                        if (data.Length > 0) fs.Pwrite(fd, data, 0);
                        fs.Close(fd);
                        files[path] = data;
                        created.Add(path);
                        Assert.Equal(Errno.EEXIST, Assert.Throws<Ext4Exception>(() => fs.Open(B(path), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4)).Errno);
                    }
                    else if (op < 7)
                    {
                        var path = Child(parent);
                        fs.Mkdir(B(path), 0x1ED);
                        dirs.Add(path);
                        created.Add(path);
                    }
                    else if (op < 9 && files.Count > 0)
                    {
                        var victim = files.Keys.ElementAt(rng.Next(files.Count));
                        fs.Unlink(B(victim));
                        files.Remove(victim);
                        removed.Add(victim);
                        Assert.Equal(Errno.ENOENT, Assert.Throws<Ext4Exception>(() => fs.Open(B(victim), OpenFlags.RdOnly, 0)).Errno);
                    }
                    else if (op == 10 && files.Count > 0)
                    {
                        var src = files.Keys.ElementAt(rng.Next(files.Count));
                        var dst = Child(parent);
                        fs.Link(B(src), B(dst));
                        files[dst] = files[src];
                    }
                    else if (op == 11)
                    {
                        var path = Child(parent);
                        var target = "t/" + new string((char)('a' + rng.Next(26)), rng.Next(1, 200)); // fast and slow symlinks
                        fs.Symlink(B(target), B(path));
                        symlinks[path] = target;
                    }
                    else if (op == 12 && files.Count > 0)
                    {
                        // rename a file, sometimes over another file
                        var src = files.Keys.ElementAt(rng.Next(files.Count));
                        var dst = rng.Next(3) == 0 && files.Count > 1 ? files.Keys.Where(k => k != src).ElementAt(rng.Next(files.Count - 1)) : Child(parent);
                        fs.Rename(B(src), B(dst));
                        files[dst] = files[src];
                        files.Remove(src);
                        removed.Add(src);
                        removed.Remove(dst);
                    }
                    else if (op == 13)
                    {
                        // move a created directory (and everything below it) under another directory
                        var movable = dirs.Where(created.Contains).ToList();
                        if (movable.Count == 0) continue;
                        var d = movable[rng.Next(movable.Count)];
                        var dest = dirs.Where(x => x != d && !x.StartsWith(d + "/")).ElementAt(rng.Next(dirs.Count(x => x != d && !x.StartsWith(d + "/"))));
                        var nd = Child(dest);
                        fs.Rename(B(d), B(nd));
                        string Move(string p) => p == d ? nd : p.StartsWith(d + "/") ? nd + p[d.Length..] : p;
                        foreach (var k in files.Keys.ToList()) if (Move(k) != k) { files[Move(k)] = files[k]; files.Remove(k); }
                        foreach (var k in symlinks.Keys.ToList()) if (Move(k) != k) { symlinks[Move(k)] = symlinks[k]; symlinks.Remove(k); }
                        for (int i = 0; i < dirs.Count; i++) dirs[i] = Move(dirs[i]);
                        created = created.Select(Move).ToHashSet();
                        removed.Add(d);
                        Assert.Equal(Errno.EINVAL, Assert.Throws<Ext4Exception>(() => fs.Rename(B(nd), B(nd + "/inside"))).Errno);
                    }
                    else
                    {
                        var empty = dirs.Where(d => created.Contains(d) && !files.Keys.Any(f => f.StartsWith(d + "/")) && !symlinks.Keys.Any(f => f.StartsWith(d + "/")) && !dirs.Any(x => x.StartsWith(d + "/"))).ToList();
                        if (empty.Count == 0) continue;
                        var d = empty[rng.Next(empty.Count)];
                        fs.Rmdir(B(d));
                        dirs.Remove(d);
                        created.Remove(d);
                        removed.Add(d);
                    }
                }
                // errno contract
                Assert.Equal(Errno.ENOTEMPTY, Assert.Throws<Ext4Exception>(() => fs.Rmdir(B("/small"))).Errno);
                Assert.Equal(Errno.EISDIR, Assert.Throws<Ext4Exception>(() => fs.Unlink(B("/small"))).Errno);
                Assert.Equal(Errno.ENOTDIR, Assert.Throws<Ext4Exception>(() => fs.Rmdir(B("/hello.txt"))).Errno);
                Assert.Equal(Errno.EEXIST, Assert.Throws<Ext4Exception>(() => fs.Mkdir(B("/small"), 0x1ED)).Errno);
                Assert.Equal(Errno.ENOENT, Assert.Throws<Ext4Exception>(() => fs.Unlink(B("/no/such"))).Errno);
                Assert.Equal(Errno.ENAMETOOLONG, Assert.Throws<Ext4Exception>(() => fs.Mkdir(B("/" + new string('a', 256)), 0x1ED)).Errno);
            }

            var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
            Assert.True(rc == 0, $"{config} seed {seed}: e2fsck -fn exit {rc}\n{output}");
            using (var ro = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true }))
            {
                // debugfs (a process each) on a sample; the kernel walk below reads every file
                foreach (var (path, content) in files.OrderBy(_ => rng.Next()).Take(40))
                {
                    var got = Debugfs(image, path);
                    Assert.True(got.AsSpan().SequenceEqual(content), $"{config}: debugfs reads {path} differently");
                }
                foreach (var (path, target) in symlinks)
                    Assert.Equal(target, Encoding.UTF8.GetString(ro.ReadLink(AtFlags.Root, B(path))));
                foreach (var path in removed.Where(r => !files.ContainsKey(r) && !dirs.Contains(r) && !symlinks.ContainsKey(r)))
                    Assert.Equal(Errno.ENOENT, Assert.Throws<Ext4Exception>(() => ro.Statx(AtFlags.Root, B(path), 0, StatxMask.BasicStats)).Errno);
            }
            KernelSeesModel(image, files, dirs, removed.Where(r => !files.ContainsKey(r) && !dirs.Contains(r) && !symlinks.ContainsKey(r)).ToList(), config, symlinks);
        }
        finally { File.Delete(image); }
    }

    private static byte[] Debugfs(string image, string path)
    {
        var tmp = Path.Combine(Path.GetTempPath(), $"untorn-ns-{Guid.NewGuid():N}");
        try
        {
            var (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", $"dump \"{path}\" {tmp}", image]);
            Assert.True(rc == 0 && File.Exists(tmp), output);
            return File.ReadAllBytes(tmp);
        }
        finally { File.Delete(tmp); }
    }

    private static void KernelSeesModel(string image, Dictionary<string, byte[]> files, List<string> dirs, List<string> removed, string config, Dictionary<string, string> symlinks)
    {
        using var m = Oracles.LoopMount.TryMount(image, readOnly: true, out var reason);
        if (m == null)
        {
            Oracles.Note($"{config}: the kernel's view not checked ({reason})");
            return;
        }
        var mnt = m.Dir;
        foreach (var (path, content) in files)
            Assert.True(File.ReadAllBytes(mnt + path).AsSpan().SequenceEqual(content), $"{config}: the kernel reads {path} differently");
        foreach (var d in dirs) Assert.True(Directory.Exists(mnt + d), $"{config}: the kernel does not see {d}");
        foreach (var r in removed) Assert.False(Path.Exists(mnt + r), $"{config}: the kernel still sees {r}");
        foreach (var (p, t) in symlinks) Assert.Equal(t, new FileInfo(mnt + p).LinkTarget);
        // a full listing of the htree directory through the kernel's own index lookup
        Assert.Equal(Directory.GetFileSystemEntries(mnt + "/bigdir").Length, Directory.GetFileSystemEntries(mnt + "/bigdir").Distinct().Count());
    }
}
