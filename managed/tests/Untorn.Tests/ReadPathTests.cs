using System.Text;

namespace Untorn.Tests;

/// <summary>
/// The read path against the source tree mke2fs copied into each image: every file's bytes, every
/// directory's listing, every link's target, and the stat fields mke2fs -d preserves.
/// </summary>
public class ReadPathTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    private static Ext4Fs OpenConfig(string config) =>
        Ext4Fs.Open(TestImages.ImagePath(config), new OpenOptions { ReadOnly = true });

    private static IEnumerable<FileSystemInfo> Walk(string root)
    {
        foreach (var e in new DirectoryInfo(root).EnumerateFileSystemInfos("*", new EnumerationOptions
                 { RecurseSubdirectories = true, AttributesToSkip = 0 }))
            yield return e;
    }

    private static string Rel(string path) => "/" + Path.GetRelativePath(TestImages.Tree, path).Replace('\\', '/');

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void ReadData_EveryFile_EqualsSourceBytes(string config)
    {
        TestImages.Require();
        using var fs = OpenConfig(config);
        var defects = TestImages.MkfsDefects(config);
        int files = 0;
        foreach (var f in Walk(TestImages.Tree).OfType<FileInfo>().Where(f => f.LinkTarget == null && !defects.Contains(Rel(f.FullName))))
        {
            var expected = File.ReadAllBytes(f.FullName);
            int fd = fs.Open(B(Rel(f.FullName)), OpenFlags.RdOnly, 0);
            var actual = new byte[expected.Length + 100];
            Assert.Equal(expected.Length, fs.Pread(fd, actual, 0));
            Assert.True(expected.AsSpan().SequenceEqual(actual.AsSpan(0, expected.Length)), $"{config}:{Rel(f.FullName)} differs");
            Assert.Equal(0, fs.Pread(fd, actual, expected.Length));
            fs.Close(fd);
            files++;
        }
        Assert.True(files > 5000, $"only {files} files walked");
    }

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void ReadData_OddChunksAndOffsets_EqualSourceBytes(string config)
    {
        TestImages.Require();
        using var fs = OpenConfig(config);
        var rng = new Random(1234);
        var defects = TestImages.MkfsDefects(config);
        foreach (var name in new[] { "fragmented", "sparse", "multi-mib", "size-4097", "size-12289", "random-size", "size-150" })
        {
            if (defects.Contains("/" + name)) continue;
            var expected = File.ReadAllBytes(Path.Combine(TestImages.Tree, name));
            int fd = fs.Open(B("/" + name), OpenFlags.RdOnly, 0);
            for (int i = 0; i < 200; i++)
            {
                long off = rng.NextInt64(0, expected.Length + 10);
                int len = rng.Next(1, 70000);
                var buf = new byte[len];
                int n = fs.Pread(fd, buf, off);
                int want = (int)Math.Max(0, Math.Min(len, expected.Length - off));
                Assert.Equal(want, n);
                if (want > 0)
                    Assert.True(expected.AsSpan((int)off, want).SequenceEqual(buf.AsSpan(0, n)), $"{config}:/{name} at {off}+{len}");
            }
            fs.Close(fd);
        }
    }

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void ReadDir_EveryDirectory_EqualsSourceListing(string config)
    {
        TestImages.Require();
        using var fs = OpenConfig(config);
        var dirs = Walk(TestImages.Tree).OfType<DirectoryInfo>().Where(d => d.LinkTarget == null).Select(d => d.FullName)
            .Prepend(TestImages.Tree);
        foreach (var dir in dirs)
        {
            string rel = dir == TestImages.Tree ? "/" : Rel(dir);
            int fd = fs.Open(B(rel), OpenFlags.RdOnly | OpenFlags.Directory, 0);
            var seen = new Dictionary<string, byte>();
            for (List<DirEntry> batch; (batch = fs.ReadDir(fd, 97)).Count > 0;)
                foreach (var e in batch) Assert.True(seen.TryAdd(e.NameString, e.FileType), $"{rel}: duplicate {e.NameString}");
            fs.Close(fd);
            var expected = new DirectoryInfo(dir).EnumerateFileSystemInfos().ToDictionary(i => i.Name, TypeOf);
            if (rel == "/") expected["lost+found"] = DirFileType.Dir;
            expected["."] = DirFileType.Dir;
            expected[".."] = DirFileType.Dir;
            Assert.Equal(expected.OrderBy(k => k.Key, StringComparer.Ordinal), seen.OrderBy(k => k.Key, StringComparer.Ordinal));
        }
    }

    private static byte TypeOf(FileSystemInfo i) =>
        i.LinkTarget != null ? DirFileType.Symlink : i is DirectoryInfo ? DirFileType.Dir : DirFileType.Regular;

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void ReadLink_EveryLink_EqualsSourceTarget(string config)
    {
        TestImages.Require();
        using var fs = OpenConfig(config);
        foreach (var l in Walk(TestImages.Tree).Where(i => i.LinkTarget != null))
            Assert.Equal(l.LinkTarget, Encoding.UTF8.GetString(fs.ReadLink(AtFlags.Root, B(Rel(l.FullName)))));
    }

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void Statx_Files_MatchSourceStat(string config)
    {
        TestImages.Require();
        using var fs = OpenConfig(config);
        var defects = TestImages.MkfsDefects(config);
        foreach (var f in Walk(TestImages.Tree).Where(i => !defects.Contains(Rel(i.FullName))).Where(i => i.Name is "hello.txt" or "size-59" or "bigdir" or "multi-mib" or "sparse" or "link-slow" or "bottom.txt"))
        {
            var st = fs.Statx(AtFlags.Root, B(Rel(f.FullName)), AtFlags.SymlinkNoFollow, StatxMask.BasicStats | StatxMask.Btime);
            var lst = Tools.Run("stat", ["-c", "%u %g %s %Y %f %a", f.FullName]).Output.Trim().Split(' ');
            Assert.Equal(Convert.ToInt32(lst[5], 8), st.Mode & 0xFFF);
            Assert.Equal(uint.Parse(lst[0]), st.Uid);
            Assert.Equal(uint.Parse(lst[1]), st.Gid);
            if (f is FileInfo || f.LinkTarget != null) Assert.Equal(ulong.Parse(lst[2]), st.Size);
            Assert.Equal(long.Parse(lst[3]), st.Mtime.Seconds);
            Assert.Equal(Convert.ToUInt32(lst[4], 16) & 0xF000, (uint)st.Mode & 0xF000);
            Assert.Equal(StatxMask.BasicStats, st.Mask & StatxMask.BasicStats);
        }
    }

    [Theory]
    [InlineData("/does-not-exist", Errno.ENOENT)]
    [InlineData("/hello.txt/x", Errno.ENOTDIR)]
    [InlineData("/loop-a", Errno.ELOOP)]
    [InlineData("/hello.txt/", Errno.ENOTDIR)]
    [InlineData("/link-dangling", Errno.ENOENT)]
    [InlineData("", Errno.ENOENT)]
    public void Open_BadPaths_FailWithKernelErrno(string path, int errno)
    {
        TestImages.Require();
        using var fs = OpenConfig("ext4-4k");
        var e = Assert.Throws<Ext4Exception>(() => fs.Open(B(path), OpenFlags.RdOnly, 0));
        Assert.Equal(errno, e.Errno);
    }

    [Fact]
    public void Open_NameLongerThan255_IsENAMETOOLONG()
    {
        TestImages.Require();
        using var fs = OpenConfig("ext4-4k");
        var e = Assert.Throws<Ext4Exception>(() => fs.Open(B("/" + new string('a', 256)), OpenFlags.RdOnly, 0));
        Assert.Equal(Errno.ENAMETOOLONG, e.Errno);
    }

    [Theory]
    [InlineData("/link-fast", "hello, untorn\n")]
    [InlineData("/link-chain", "hello, untorn\n")]
    [InlineData("/link-abs", "hello, untorn\n")]
    [InlineData("/link-slow", "bottom of the tree\n")]
    [InlineData("/link-dir/../../hello.txt", "hello, untorn\n")]
    [InlineData("/deep/./level1/../../hello.txt", "hello, untorn\n")]
    public void Open_ThroughSymlinksAndDots_ReadsTarget(string path, string content)
    {
        TestImages.Require();
        foreach (var config in TestImages.ExpectedConfigs)
        {
            using var fs = OpenConfig(config);
            int fd = fs.Open(B(path), OpenFlags.RdOnly, 0);
            var buf = new byte[100];
            int n = fs.Pread(fd, buf, 0);
            Assert.Equal(content, Encoding.UTF8.GetString(buf, 0, n));
        }
    }

    [Fact]
    public void Pread_OnDirectory_IsEISDIR()
    {
        TestImages.Require();
        using var fs = OpenConfig("ext4-4k");
        int fd = fs.Open(B("/bigdir"), OpenFlags.RdOnly, 0);
        Assert.Equal(Errno.EISDIR, Assert.Throws<Ext4Exception>(() => fs.Pread(fd, new byte[10], 0)).Errno);
    }

    [Fact]
    public void Configs_ScriptMakesEveryExpectedConfig()
    {
        TestImages.Require();
        Assert.Equal(TestImages.ExpectedConfigs.Order(), TestImages.Configs.Order());
    }
}
