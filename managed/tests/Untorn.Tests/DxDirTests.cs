using System.Text;

namespace Untorn.Tests;

/// <summary>
/// Htree lookups go through the index, not the linear fallback: DxDir.Lookup throws
/// BadIndexException where Namei would fall back, so every name found by it was found by hash,
/// and the device read count per lookup shows it touched only the index path. Inode numbers come
/// from debugfs `ls -p` (a linear listing by e2fsprogs).
/// </summary>
public class DxDirTests
{
    private const int Files = 1500;

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    [Theory]
    [MemberData(nameof(TestImages.ConfigData), MemberType = typeof(TestImages))]
    public void Lookup_EveryBigdirName_FoundThroughIndexWithFewReads(string config)
    {
        TestImages.Require();
        var debugfs = Tools.RequireTool("debugfs");
        var expected = DebugfsListing(debugfs, TestImages.ImagePath(config), "/bigdir");
        Assert.Equal(5200, expected.Count);
        AssertIndexedLookups(TestImages.ImagePath(config), "/bigdir", expected, DxHashVersion.HalfMd4);
    }

    /// <summary>
    /// Directories indexed by e2fsck -D with each hash version and signedness: mke2fs -d copies a
    /// tree of names with bytes >= 0x80 (UTF-8), debugfs sets s_def_hash_version, s_flags and
    /// s_hash_seed, e2fsck -fyD rebuilds the index with them and e2fsck -fn checks it.
    /// </summary>
    [Theory]
    [InlineData("legacy", false, true)]
    [InlineData("legacy", true, false)]
    [InlineData("half_md4", false, false)]
    [InlineData("half_md4", true, true)]
    [InlineData("tea", false, true)]
    [InlineData("tea", true, false)]
    public void Lookup_IndexBuiltByE2fsckWithEachHashVersion_FoundThroughIndex(string alg, bool unsignedHash, bool zeroSeed)
    {
        var mke2fs = Tools.RequireTool("mke2fs");
        var e2fsck = Tools.RequireTool("e2fsck");
        var debugfs = Tools.RequireTool("debugfs");
        var work = Path.Combine(Path.GetTempPath(), $"untorn-dxdir-{Guid.NewGuid():N}");
        var tree = Path.Combine(work, "tree");
        var img = Path.Combine(work, "dx.img");
        try
        {
            // 1 KiB blocks and long names so the index needs two levels with few files (mke2fs -d
            // inserts into linear directories, quadratic in their size); mixed scripts for high bytes.
            var dir = Directory.CreateDirectory(Path.Combine(tree, "d")).FullName;
            string[] stems = ["entry", "größe-", "файл-", "ファイル", "ƒ\u00a0x", "\U0001F600", "ÿÿ"];
            var rng = new Random(alg.Length * 7 + (unsignedHash ? 1 : 0));
            for (int i = 0; i < Files; i++)
            {
                var name = $"{stems[i % stems.Length]}{i:x}-{new string((char)('a' + i % 26), rng.Next(50, 180))}";
                File.Create(Path.Combine(dir, name)).Dispose();
            }
            using (var f = File.Create(img)) f.SetLength(32L << 20);
            Run(mke2fs, ["-q", "-F", "-t", "ext4", "-b", "1024", "-d", tree, img]);
            var seed = zeroSeed ? "00000000-0000-0000-0000-000000000000" : Guid.NewGuid().ToString();
            var cmds = Path.Combine(work, "cmds");
            File.WriteAllText(cmds, $"ssv flags {(unsignedHash ? 2 : 1)}\nssv hash_seed {seed}\nssv def_hash_version {alg}\n");
            var (_, ssvOut) = Run(debugfs, ["-w", "-f", cmds, img]);
            Assert.DoesNotContain("nvalid", ssvOut);
            var (rc, output) = Tools.Run(e2fsck, ["-fyD", img]);
            Assert.True(rc <= 1, output);
            Run(e2fsck, ["-fn", img]);
            var (_, htree) = Run(debugfs, ["-R", "htree /d", img]);
            var wantVersion = alg switch { "legacy" => DxHashVersion.Legacy, "half_md4" => DxHashVersion.HalfMd4, _ => DxHashVersion.Tea };
            Assert.Contains($"Hash Version: {(int)wantVersion}\n", htree);
            var (_, dumpe2fs) = Run(Tools.RequireTool("dumpe2fs"), ["-h", img]);
            Assert.Contains(unsignedHash ? "unsigned_directory_hash" : "signed_directory_hash", dumpe2fs);

            var expected = DebugfsListing(debugfs, img, "/d");
            Assert.Equal(Files, expected.Count);
            AssertIndexedLookups(img, "/d", expected, unsignedHash ? wantVersion + 3 : wantVersion);
        }
        finally { Directory.Delete(work, recursive: true); }
    }

    private static void AssertIndexedLookups(string image, string dirPath, Dictionary<string, uint> expected, DxHashVersion version)
    {
        var dev = new CountingDevice(new FileBlockDevice(image, readOnly: true));
        using var fs = Ext4Fs.Open(dev, new OpenOptions { ReadOnly = true });
        var dir = Namei.Resolve(fs, fs.ReadInode(Ext4Fs.RootIno), B(dirPath), followLast: true);
        Assert.True(dir.IsIndexedDir, $"{dirPath} in {image} is not htree-indexed");
        ulong dirBlocks = dir.Size / (ulong)fs.Super.BlockSize;
        var root = new byte[fs.Super.BlockSize];
        Assert.Equal(fs.Super.BlockSize, fs.ReadData(dir, root, 0));
        int levels = root[0x1E];
        Assert.Equal((int)version % 3, (int)root[0x1C]);
        Assert.Equal((byte)version >= 3, fs.Super.UnsignedDirHash);

        // dx_root, one node per extra level, the leaf and a neighbour leaf (hash collision), each
        // costing one read plus the block-map blocks above it (extent depth, or up to 2 indirect
        // levels): far fewer than the directory's blocks a linear scan reads.
        int mapDepth = dir.HasExtents ? System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(dir.BlockArray[6..]) : 2;
        int bound = (levels + 3) * (1 + mapDepth), maxReads = 0;
        foreach (var (name, ino) in expected)
        {
            dev.Reset();
            Assert.Equal(ino, DxDir.Lookup(fs, dir, B(name)));
            maxReads = Math.Max(maxReads, dev.Reads);
        }
        Assert.True(maxReads <= bound && (ulong)bound * 4 < dirBlocks,
            $"{expected.Count} lookups read up to {maxReads} blocks each (bound {bound}) in a {dirBlocks}-block directory");
        TestContext.Current.SendDiagnosticMessage(
            $"{image} {dirPath}: {expected.Count} names, {dirBlocks} blocks, {levels + 1} index levels, block-map depth {mapDepth}, at most {maxReads} reads per lookup");

        // Absent names hash to a leaf and are not in it.
        foreach (var absent in new[] { "entry-99999-", "no such name", "größe-ffff-" })
        {
            dev.Reset();
            Assert.Equal(0u, DxDir.Lookup(fs, dir, B(absent)));
            Assert.InRange(dev.Reads, 1, bound);
        }
    }

    /// <summary>name → inode from debugfs `ls -p` ("/ino/mode/uid/gid/name/size/"), without . and ..</summary>
    internal static Dictionary<string, uint> DebugfsListing(string debugfs, string image, string dir)
    {
        var (_, output) = Run(debugfs, ["-R", $"ls -p {dir}", image]);
        var result = new Dictionary<string, uint>();
        foreach (var line in output.Split('\n'))
        {
            var f = line.Split('/');
            // ino 0 with no name: the fake dirent that hides an htree node block from old readers.
            if (f.Length != 8 || f[0] != "" || f[1] == "0" || f[5] is "." or "..") continue;
            result.Add(f[5], uint.Parse(f[1]));
        }
        return result;
    }

    private static (int, string) Run(string tool, string[] args)
    {
        var (rc, output) = Tools.Run(tool, args);
        Assert.True(rc == 0, $"{Path.GetFileName(tool)} {string.Join(' ', args)} failed ({rc}):\n{output}");
        return (rc, output);
    }
}
