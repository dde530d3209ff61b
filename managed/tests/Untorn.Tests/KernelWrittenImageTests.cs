using System.Text;

namespace Untorn.Tests;

/// <summary>
/// Images the Linux kernel wrote: loop-mount a fresh ext4 image, let the kernel create files
/// (unwritten extents from fallocate, a directory it indexes itself, links), unmount, check it
/// with e2fsck -fn, and read it back through untorn — or change it with untorn and check that
/// e2fsck, debugfs and the kernel agree with the result. Needs root and a working loop mount.
/// </summary>
public class KernelWrittenImageTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private sealed class Mounted : IDisposable
    {
        public string Image { get; }
        public string Dir { get; }

        public Mounted(string mkfsArgs)
        {
            if (Environment.UserName != "root") Assert.Skip("kernel-written images need root for mount -o loop");
            var mke2fs = Tools.RequireTool("mke2fs");
            Image = Path.Combine(Path.GetTempPath(), $"untorn-kernel-{Guid.NewGuid():N}.img");
            Dir = Image + ".mnt";
            using (var f = File.Create(Image)) f.SetLength(128L << 20);
            var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", .. mkfsArgs.Split(' ', StringSplitOptions.RemoveEmptyEntries), Image]);
            Assert.True(rc == 0, output);
            Directory.CreateDirectory(Dir);
            (rc, output) = Tools.Run("mount", ["-o", "loop", Image, Dir]);
            if (rc != 0)
            {
                Cleanup();
                Assert.Skip("mount -o loop does not work here: " + output.Trim());
            }
        }

        public void Unmount()
        {
            var (rc, output) = Oracles.Umount(Dir);
            Assert.True(rc == 0, output);
        }

        private void Cleanup()
        {
            try { Directory.Delete(Dir); } catch (IOException) { }
            File.Delete(Image);
        }

        public void Dispose()
        {
            Oracles.Umount(Dir);
            Cleanup();
        }
    }

    [Theory]
    [InlineData("-t ext4")]
    [InlineData("-t ext4 -b 1024 -O ^metadata_csum")]
    [InlineData("-t ext4 -O bigalloc -C 16384 -b 4096")]
    public void Read_FilesTheKernelWrote_MatchWhatWasWritten(string mkfsArgs)
    {
        using var m = new Mounted(mkfsArgs);
        var rng = new Random(42);
        var expected = new Dictionary<string, byte[]>();

        // fallocate leaves unwritten extents; writing into the middle splits them.
        var pre = Path.Combine(m.Dir, "prealloc");
        Assert.Equal(0, Tools.Run("fallocate", ["-l", "8M", pre]).ExitCode);
        var middle = new byte[100000];
        rng.NextBytes(middle);
        using (var fs = new FileStream(pre, FileMode.Open, FileAccess.Write)) { fs.Position = 3_000_001; fs.Write(middle); }
        var preBytes = new byte[8 << 20];
        middle.CopyTo(preBytes, 3_000_001);
        expected["/prealloc"] = preBytes;

        // A directory the kernel grows and indexes itself (its own hash seed and version).
        Directory.CreateDirectory(Path.Combine(m.Dir, "many"));
        for (int i = 0; i < 3000; i++)
        {
            var data = new byte[i % 97];
            rng.NextBytes(data);
            var name = $"many/file-{i:x5}-{new string('q', i % 50)}";
            File.WriteAllBytes(Path.Combine(m.Dir, name), data);
            if (i % 7 == 0) expected["/" + name] = data;
        }
        var big = new byte[5_000_000];
        rng.NextBytes(big);
        File.WriteAllBytes(Path.Combine(m.Dir, "big"), big);
        expected["/big"] = big;
        File.CreateSymbolicLink(Path.Combine(m.Dir, "to-big"), "big");
        File.CreateSymbolicLink(Path.Combine(m.Dir, "long-link"), "many/" + new string('x', 200));
        m.Unmount();

        var (rc, fsck) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", m.Image]);
        Assert.True(rc == 0, fsck);

        using var fsys = Ext4Fs.Open(m.Image, new OpenOptions { ReadOnly = true });
        foreach (var (path, want) in expected)
        {
            int fd = fsys.Open(B(path), OpenFlags.RdOnly, 0);
            var got = new byte[want.Length + 1];
            Assert.Equal(want.Length, fsys.Pread(fd, got, 0));
            Assert.True(want.AsSpan().SequenceEqual(got.AsSpan(0, want.Length)), path);
            fsys.Close(fd);
        }
        Assert.Equal("big", Encoding.UTF8.GetString(fsys.ReadLink(AtFlags.Root, B("/to-big"))));
        Assert.Equal(200 + 5, fsys.ReadLink(AtFlags.Root, B("/long-link")).Length);
        var dfd = fsys.Open(B("/many"), OpenFlags.RdOnly, 0);
        int count = 0;
        for (List<DirEntry> batch; (batch = fsys.ReadDir(dfd, 500)).Count > 0;) count += batch.Count;
        Assert.Equal(3000 + 2, count);
    }

    [Theory]
    [InlineData("-t ext4", 11)]
    [InlineData("-t ext4 -b 1024 -O ^metadata_csum", 12)]
    public void Modify_FilesTheKernelWrote_FsckCleanAndKernelReadsModel(string mkfsArgs, int seed)
    {
        using var m = new Mounted(mkfsArgs);
        var rng = new Random(seed);
        var model = new TreeModel();
        model.AddDir("/lost+found");
        KernelWrites(m.Dir, model, rng);
        m.Unmount();
        Oracles.AssertFsckClean(m.Image, "as the kernel left it");
        foreach (var f in model.Files.Values) f.Touched = false;

        using (var fs = Ext4Fs.Open(m.Image))
            UntornModifies(fs, model, rng);
        model.AssertImageMatches(m.Image, $"kernel-written, changed by untorn ({mkfsArgs}, seed {seed})", rng);

        // and back: the kernel changes what untorn wrote, e2fsck stays clean, untorn reads it
        using (var rw = Oracles.LoopMount.TryMount(m.Image, readOnly: false, out var reason))
        {
            Assert.True(rw != null, reason);
            var more = Bytes(rng, 5000);
            using (var f = new FileStream(rw.Dir + "/moved/new/aligned", FileMode.Append)) f.Write(more);
            model.Files["/moved/new/aligned"].Write(model.Files["/moved/new/aligned"].Length, more);
            File.Delete(rw.Dir + "/many/u1-z");
            model.Remove("/many/u1-z");
            rw.Unmount();
        }
        Oracles.AssertFsckClean(m.Image, "changed by the kernel again");
        using var ro = Ext4Fs.Open(m.Image, new OpenOptions { ReadOnly = true });
        model.AssertEngineReads(ro, "/moved/new/aligned", "after the kernel appended");
        Assert.Equal(Errno.ENOENT, Assert.Throws<Ext4Exception>(() => ro.Open(B("/many/u1-z"), OpenFlags.RdOnly, 0)).Errno);
    }

    private static byte[] Bytes(Random rng, int n)
    {
        var d = new byte[n];
        rng.NextBytes(d);
        return d;
    }

    // Files of several sizes, a sparse one (truncate), unwritten extents (fallocate, also past
    // the size), a directory the kernel indexes, nested directories and symlinks.
    private static void KernelWrites(string dir, TreeModel model, Random rng)
    {
        foreach (int n in new[] { 0, 1, 4095, 4097, (1 << 20) + 13, 5 << 20 })
        {
            var d = Bytes(rng, n);
            File.WriteAllBytes(dir + $"/s{n}", d);
            var f = new ModelFile();
            f.Write(0, d);
            model.AddFile($"/s{n}", f);
        }
        var sparse = new ModelFile();
        using (var fs = new FileStream(dir + "/sparse", FileMode.CreateNew))
        {
            var a = Bytes(rng, 5000);
            var b = Bytes(rng, 3000);
            fs.Write(a);
            fs.SetLength(10 << 20);
            fs.Position = 6 << 20;
            fs.Write(b);
            sparse.Write(0, a);
            sparse.SetLength(10 << 20);
            sparse.Write(6 << 20, b);
        }
        model.AddFile("/sparse", sparse);
        Assert.Equal(0, Tools.Run("fallocate", ["-l", "4M", dir + "/prealloc"]).ExitCode);
        var pre = new ModelFile();
        pre.SetLength(4 << 20);
        model.AddFile("/prealloc", pre);
        File.WriteAllBytes(dir + "/prealloc-keep", []);
        var (rc, output) = Tools.Run("fallocate", ["-n", "-l", "2M", dir + "/prealloc-keep"]); // unwritten past the size
        Assert.True(rc == 0, output);
        model.AddFile("/prealloc-keep", new ModelFile());
        Directory.CreateDirectory(dir + "/many");
        model.AddDir("/many");
        for (int i = 0; i < 3000; i++)
        {
            var d = Bytes(rng, i % 97);
            var name = $"/many/k{i:x4}-{new string('q', i % 40)}";
            File.WriteAllBytes(dir + name, d);
            var f = new ModelFile();
            f.Write(0, d);
            model.AddFile(name, f);
        }
        Directory.CreateDirectory(dir + "/d1/d2");
        model.AddDir("/d1");
        model.AddDir("/d1/d2");
        var inner = Bytes(rng, 70000);
        File.WriteAllBytes(dir + "/d1/d2/inner", inner);
        var fi = new ModelFile();
        fi.Write(0, inner);
        model.AddFile("/d1/d2/inner", fi);
        File.CreateSymbolicLink(dir + "/to-big", "s5242880");
        model.AddSymlink("/to-big", "s5242880");
        var longTarget = "many/" + new string('x', 200);
        File.CreateSymbolicLink(dir + "/long-link", longTarget);
        model.AddSymlink("/long-link", longTarget);
    }

    private static void UntornModifies(Ext4Fs fs, TreeModel model, Random rng)
    {
        void Write(string path, long off, int n)
        {
            var d = Bytes(rng, n);
            int fd = fs.Open(B(path), OpenFlags.RdWr, 0);
            Assert.Equal(n, fs.Pwrite(fd, d, off));
            fs.Close(fd);
            model.Files[path].Write(off, d);
        }
        void Space(string path, int mode, long off, long len)
        {
            int fd = fs.Open(B(path), OpenFlags.RdWr, 0);
            if (mode < 0) fs.Ftruncate(fd, off); else fs.Fallocate(fd, mode, off, len);
            fs.Close(fd);
            var f = model.Files[path];
            if (mode < 0) f.SetLength(off); else f.Zero(off, len);
            if (mode == FallocFlags.ZeroRange && off + len > f.Length) f.SetLength(off + len);
        }
        // into the kernel's unwritten extents: partial blocks, across the end, past the size
        Write("/prealloc", (1 << 20) + 100, 70000);
        Write("/prealloc", (4 << 20) - 3000, 10000);
        Write("/prealloc-keep", 500_000, 10000);
        // appends, punches, zeroing, truncates of the kernel's written and sparse files
        Write("/s4097", 4097, 5000);
        Write("/s1048589", (1 << 20) + 13, 123_456);
        Write("/sparse", (6 << 20) - 100, 9000);
        Space("/s5242880", FallocFlags.PunchHole | FallocFlags.KeepSize, (1 << 20) + 100, 2 << 20);
        Space("/sparse", FallocFlags.ZeroRange, 1000, 3000);
        Space("/s1048589", -1, 300_000, 0);
        Space("/sparse", -1, 12 << 20, 0);
        Space("/s1", -1, 0, 0);
        // the namespace: renames (also over a file and of a directory), unlinks in the kernel's
        // htree (many whole leaves), new names in it, new directories, links, symlinks
        foreach (var (from, to) in new[] { ("/s1", "/d1/renamed"), ("/s4095", "/s0"), ("/d1/d2", "/moved"), ("/long-link", "/many/link") })
        {
            fs.Rename(B(from), B(to));
            model.Rename(from, to);
        }
        foreach (var p in model.Dirs["/many"].Where(n => n.StartsWith('k')).Select(n => "/many/" + n).Where(_ => rng.Next(3) > 0).ToList())
        {
            fs.Unlink(B(p));
            model.Remove(p);
        }
        fs.Unlink(B("/to-big"));
        model.Remove("/to-big");
        for (int i = 0; i < 500; i++)
        {
            var p = $"/many/u{i}-{new string('z', i % 50)}";
            fs.Close(fs.Open(B(p), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4));
            model.AddFile(p, new ModelFile { Touched = true });
            if (i % 10 == 0) Write(p, 0, rng.Next(1, 20000));
        }
        fs.Mkdir(B("/moved/new"), 0x1ED);
        model.AddDir("/moved/new");
        int afd = fs.Open(B("/moved/new/aligned"), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4);
        fs.AllocAligned(afd, 0, 4 << 16, 1 << 16, 0);
        fs.Close(afd);
        var aligned = new ModelFile { Touched = true };
        aligned.SetLength(4 << 16);
        model.AddFile("/moved/new/aligned", aligned);
        Write("/moved/new/aligned", 70000, 60000);
        fs.Link(B("/moved/inner"), B("/moved/new/inner-link"));
        model.AddFile("/moved/new/inner-link", model.Files["/moved/inner"]);
        Write("/moved/new/inner-link", 69000, 2000);
        fs.Symlink(B("../inner"), B("/moved/new/sym"));
        model.AddSymlink("/moved/new/sym", "../inner");
        foreach (var f in new[] { "/s0", "/s4097", "/prealloc", "/sparse", "/moved/inner" })
            model.AssertEngineReads(fs, f, "before close");
    }
}
