using System.Text;

namespace Untorn.Tests;

/// <summary>
/// Images the Linux kernel wrote: loop-mount a fresh ext4 image, let the kernel create files
/// (unwritten extents from fallocate, a directory it indexes itself, links), unmount, check it
/// with e2fsck -fn, and read it back through untorn. Needs root and a working loop mount.
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
            var (rc, output) = Tools.Run("umount", [Dir]);
            Assert.True(rc == 0, output);
        }

        private void Cleanup()
        {
            try { Directory.Delete(Dir); } catch (IOException) { }
            File.Delete(Image);
        }

        public void Dispose()
        {
            Tools.Run("umount", [Dir]);
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
}
