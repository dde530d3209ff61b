using System.Text;
using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// A linear directory whose only block fills becomes an htree (make_indexed_dir) on filesystems
/// with dir_index, and then splits leaves and grows an index level; without dir_index it stays
/// linear. Judged by e2fsck -fn (which verifies the htree), debugfs htree_dump (root info, every
/// name in a leaf), debugfs ls, dumpe2fs (the superblock's default hash), our index lookup, and —
/// as root — the kernel listing and stat'ing every name on a read-only loop mount.
/// </summary>
public partial class DirConvertTests
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    /// <summary>mke2fs options, debugfs commands run before the engine opens it ("" for none), names in /d and /, name length.</summary>
    public static TheoryData<string, string, int, int, int> Configs => new()
    {
        { "-b 4096", "", 700, 150, 40 },
        { "-b 1024", "", 700, 60, 200 }, // long names in 1 KiB leaves: the 123-entry root fills, a second index level
        { "-b 4096 -O ^metadata_csum,^64bit", "", 400, 150, 30 },
        { "-b 4096 -O bigalloc -C 16384", "", 400, 150, 30 },
        { "-b 1024 -O ^metadata_csum", "ssv def_hash_version tea\nssv flags 2\n", 300, 60, 60 }, // unsigned tea
        { "-b 1024", "ssv def_hash_version legacy\nssv flags 1\n", 300, 60, 60 }, // signed legacy
    };

    [Theory]
    [MemberData(nameof(Configs))]
    public void CreateMany_OneBlockDirFills_ConvertedToHtreeFsckClean(string options, string ssv, int inDir, int inRoot, int nameLen)
    {
        var image = MakeImage(options, ssv);
        try
        {
            var model = CreateNames(image, inDir, inRoot, nameLen);
            FsckClean(image);
            var (_, dumpe2fs) = Run("dumpe2fs", ["-h", image]);
            var hashName = DefaultHashLine().Match(dumpe2fs).Groups[1].Value;
            int wantVersion = hashName switch { "legacy" => 0, "half_md4" => 1, "tea" => 2, _ => throw new InvalidOperationException(dumpe2fs) };
            foreach (var dir in new[] { "/d", "/" })
            {
                var names = model[dir];
                var (_, htree) = Run("debugfs", ["-R", $"htree_dump {dir}", image]);
                Assert.Contains($"Hash Version: {wantVersion}\n", htree);
                Assert.Contains("Info length: 8\n", htree);
                var dumped = HtreeLeafName().Matches(htree).Select(m => m.Groups[1].Value).ToList();
                Assert.Equal(dumped.Count, dumped.Distinct().Count());
                Assert.Equal(names.Keys.Order(), dumped.Order());
                var listing = DxDirTests.DebugfsListing(Tools.RequireTool("debugfs"), image, dir);
                Assert.Equal(names.OrderBy(p => p.Key), listing.OrderBy(p => p.Key));
                AssertLookups(image, dir, listing);
            }
            var (_, bigHtree) = Run("debugfs", ["-R", "htree_dump /d", image]);
            TestContext.Current.SendDiagnosticMessage($"{options} {ssv.Replace('\n', ';')}: /d {IndirectLevels().Match(bigHtree).Value}");
            if (nameLen == 200) Assert.Contains("Indirect levels: 1\n", bigHtree);
            KernelSees(image, model);
        }
        finally { File.Delete(image); }
    }

    [Fact]
    public void CreateMany_NoDirIndexFeature_StaysLinear()
    {
        var image = MakeImage("-b 1024 -O ^dir_index", "");
        try
        {
            var model = CreateNames(image, 200, 50, 40);
            FsckClean(image);
            foreach (var dir in new[] { "/d", "/" })
            {
                var (_, htree) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", $"htree_dump {dir}", image]);
                Assert.Contains("Not a hash-indexed directory", htree);
                var listing = DxDirTests.DebugfsListing(Tools.RequireTool("debugfs"), image, dir);
                Assert.Equal(model[dir].OrderBy(p => p.Key), listing.OrderBy(p => p.Key));
            }
            var (_, stat) = Run("debugfs", ["-R", "stat /d", image]);
            Assert.True(long.Parse(SizeLine().Match(stat).Groups[1].Value) > 1024, stat); // it grew linearly
            KernelSees(image, model);
        }
        finally { File.Delete(image); }
    }

    private static string MakeImage(string options, string ssv)
    {
        var image = Path.Combine(Path.GetTempPath(), $"untorn-dxconv-{Guid.NewGuid():N}.img");
        using (var f = File.Create(image)) f.SetLength(64L << 20);
        Run("mke2fs", ["-q", "-F", "-t", "ext4", .. options.Split(' '), image]);
        if (ssv.Length > 0)
        {
            var cmds = image + ".cmds";
            File.WriteAllText(cmds, ssv);
            var (_, output) = Run("debugfs", ["-w", "-f", cmds, image]);
            File.Delete(cmds);
            Assert.DoesNotContain("nvalid", output);
        }
        return image;
    }

    /// <summary>Files (and every tenth a directory) in a new /d and in the root; returns dir → name → inode.</summary>
    private static Dictionary<string, Dictionary<string, uint>> CreateNames(string image, int inDir, int inRoot, int nameLen)
    {
        var model = new Dictionary<string, Dictionary<string, uint>> { ["/d"] = [], ["/"] = [] };
        var rng = new Random(nameLen * 31 + inDir);
        using var fs = Ext4Fs.Open(image);
        fs.Mkdir(B("/d"), 0x1ED);
        foreach (var existing in new[] { "d", "lost+found" })
            model["/"][existing] = (uint)fs.Statx(AtFlags.Root, B("/" + existing), 0, StatxMask.BasicStats).Ino;
        foreach (var (dir, count) in new[] { ("/d", inDir), ("/", inRoot) })
            for (int i = 0; i < count; i++)
            {
                var name = $"n{i:x}-{new string((char)('a' + rng.Next(26)), rng.Next(nameLen / 2, nameLen))}";
                var path = (dir == "/" ? "" : dir) + "/" + name;
                if (i % 10 == 9) fs.Mkdir(B(path), 0x1ED);
                else fs.Close(fs.Open(B(path), OpenFlags.RdWr | OpenFlags.Creat | OpenFlags.Excl, 0x1A4));
                model[dir][name] = (uint)fs.Statx(AtFlags.Root, B(path), 0, StatxMask.BasicStats).Ino;
            }
        return model;
    }

    private static void FsckClean(string image)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
        Assert.True(rc == 0 && !output.Contains("HTREE"), $"e2fsck -fn ({rc}):\n{output}");
    }

    // Every name through DxDir.Lookup, which throws instead of falling back to a linear scan.
    private static void AssertLookups(string image, string dirPath, Dictionary<string, uint> expected)
    {
        using var fs = Ext4Fs.Open(image, new OpenOptions { ReadOnly = true });
        var dir = Namei.Resolve(fs, fs.ReadInode(Ext4Fs.RootIno), B(dirPath), followLast: true);
        Assert.True(dir.IsIndexedDir, $"{dirPath} is not indexed");
        foreach (var (name, ino) in expected) Assert.Equal(ino, DxDir.Lookup(fs, dir, B(name)));
        Assert.Equal(0u, DxDir.Lookup(fs, dir, B("no-such-name")));
    }

    private static void KernelSees(string image, Dictionary<string, Dictionary<string, uint>> model)
    {
        if (Environment.UserName != "root") Assert.Skip("mounting needs root");
        var mnt = image + ".mnt";
        Directory.CreateDirectory(mnt);
        try
        {
            var (rc, output) = Tools.Run("mount", ["-o", "loop,ro", image, mnt]);
            if (rc != 0) Assert.Skip($"loop mount failed: {output}");
            try
            {
                foreach (var (dir, names) in model)
                {
                    var listed = Directory.GetFileSystemEntries(mnt + dir).Select(Path.GetFileName).Order().ToList();
                    Assert.Equal(names.Keys.Order(), listed);
                    foreach (var (name, ino) in names)
                    {
                        var (src, stat) = Tools.Run("stat", ["-c", "%i", Path.Combine(mnt + dir, name)]);
                        Assert.True(src == 0 && stat.Trim() == ino.ToString(), $"kernel stat {dir}/{name}: {stat}");
                    }
                }
            }
            finally { Tools.Umount(mnt); }
        }
        finally { Directory.Delete(mnt); }
    }

    private static (int, string) Run(string tool, string[] args)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool(tool), args);
        Assert.True(rc == 0, $"{tool} {string.Join(' ', args)} failed ({rc}):\n{output}");
        return (rc, output);
    }

    [GeneratedRegex(@"Default directory hash:\s+(\S+)")]
    private static partial Regex DefaultHashLine();

    // A leaf entry (several may share a line): inode, hash-minor_hash, (rec_len), name.
    [GeneratedRegex(@"\b\d+ 0x[0-9a-f]{8}-[0-9a-f]{8} \(\d+\) (\S+)")]
    private static partial Regex HtreeLeafName();

    [GeneratedRegex(@"Indirect levels: \d+")]
    private static partial Regex IndirectLevels();

    [GeneratedRegex(@"Size: (\d+)")]
    private static partial Regex SizeLine();
}
