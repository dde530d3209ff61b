using System.Buffers.Binary;
using System.Text;
using System.Text.RegularExpressions;
using CsCheck;

namespace Untorn.Tests;

/// <summary>
/// The htree name hashes against e2fsprogs: debugfs's `dx_hash -h VERSION -s SEED -- "NAME"` for
/// every hash version (0..5: legacy, half_md4, tea, then their unsigned variants). Batches of
/// thousands of names go through one `debugfs -f CMDFILE` (no image needed).
///
/// What a debugfs command line can carry: raw bytes 0x01..0xFF inside double quotes (a quote is
/// written as two), including spaces, tabs, '/', '#', '\\' and bytes >= 0x80 that are not UTF-8.
/// Not representable: NUL (never in a name), '\n' (ends the command) and '\r' (debugfs cuts the
/// line there); names with those two are covered by the kernel test below, which also covers the
/// EOF adjustment that only the kernel makes.
/// </summary>
public partial class DxHashTests
{
    private const int MaxNameLen = 255;

    internal sealed record Case(byte[] Name, DxHashVersion Version, uint[] Seed)
    {
        public override string ToString() =>
            $"dx_hash -h {(int)Version} -s {SeedUuid(Seed)} name[{Name.Length}]={Convert.ToHexString(Name)}";
    }

    // Bytes that make names realistic (ASCII), exercise sign extension (>= 0x80) or parsing (quote, space).
    private static readonly Gen<byte> NameByte = Gen.OneOf(
        Gen.Byte[(byte)'a', (byte)'z'],
        Gen.Byte[0x80, 0xFF],
        Gen.Byte[1, 0xFF].Where(b => b != '\n' && b != '\r'),
        Gen.OneOf<byte>((byte)'"', (byte)' ', (byte)'-', (byte)0x7F, (byte)0xFF, (byte)0x80));

    // Lengths around the 4-byte word and 16/32-byte chunk edges, plus anything up to NAME_MAX.
    private static readonly Gen<int> NameLength = Gen.OneOf(
        Gen.Int[1, MaxNameLen],
        Gen.Int[1, 40],
        Gen.OneOf<int>(1, 2, 3, 4, 5, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 96, 127, 128, 129, 223, 224, 254, 255));

    private static readonly Gen<uint[]> HashSeed = Gen.OneOf(
        Gen.Const(() => new uint[4]),                                   // unset: the MD4 initial state is used
        Gen.Const(() => new uint[] { 0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476 }),
        Gen.UInt.Array[4],
        Gen.Select(Gen.Int[0, 3], Gen.UInt[1, uint.MaxValue], (i, v) => { var s = new uint[4]; s[i] = v; return s; }));

    private static readonly Gen<Case> OneCase = Gen.Select(
        NameByte.Array[NameLength], Gen.Int[0, 5], HashSeed, (name, v, seed) => new Case(name, (DxHashVersion)v, seed));

    [Fact]
    public void TryCompute_RandomNamesAllVersionsAndSeeds_EqualDebugfsDxHash()
    {
        var debugfs = Tools.RequireTool("debugfs");
        // Each sample is one batch checked by one debugfs run; CsCheck prints the seed of a failing batch.
        OneCase.Array[1500].Sample(batch =>
        {
            var expected = DebugfsDxHash(debugfs, batch);
            for (int i = 0; i < batch.Length; i++)
            {
                var c = batch[i];
                Assert.True(DxHash.TryCompute(c.Name, c.Version, c.Seed, out uint major, out uint minor), c.ToString());
                Assert.True(expected[i] == (major, minor),
                    $"{c}: debugfs {expected[i].Major:x8}/{expected[i].Minor:x8}, untorn {major:x8}/{minor:x8}");
            }
        }, iter: 6, threads: 1);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    public void TryCompute_HighBytes_SignedAndUnsignedDifferAsDebugfs(byte version)
    {
        var signedVersion = (DxHashVersion)version;
        var debugfs = Tools.RequireTool("debugfs");
        var unsigned = signedVersion + 3;
        var seed = new uint[] { 0x01020304, 0xa0b0c0d0, 0, 0xffffffff };
        // Every byte value >= 0x80 at every position of a word and of a chunk.
        var names = new List<byte[]>();
        for (int len = 1; len <= 70; len += 3)
            for (int b = 0x80; b <= 0xFF; b += 0x0D)
                names.Add(Enumerable.Range(0, len).Select(i => (byte)(i % 5 == 0 ? b : 'k' + i % 7)).ToArray());
        var cases = names.SelectMany(n => new[] { new Case(n, signedVersion, seed), new Case(n, unsigned, seed) }).ToArray();
        var expected = DebugfsDxHash(debugfs, cases);
        int differing = 0;
        for (int i = 0; i < cases.Length; i += 2)
        {
            DxHash.TryCompute(cases[i].Name, signedVersion, seed, out uint sMajor, out uint sMinor);
            DxHash.TryCompute(cases[i].Name, unsigned, seed, out uint uMajor, out uint uMinor);
            Assert.Equal(expected[i], (sMajor, sMinor));
            Assert.Equal(expected[i + 1], (uMajor, uMinor));
            if (sMajor != uMajor) differing++;
        }
        // Sign extension must matter for these names, or the test exercised nothing.
        Assert.True(differing > names.Count * 9 / 10, $"only {differing} of {names.Count} names hash differently signed/unsigned");
    }

    [Fact]
    public void TryCompute_AsciiNames_SignedEqualsUnsigned()
    {
        var seed = new uint[] { 5, 6, 7, 8 };
        foreach (var name in new[] { "a", "hello", "entry-02600-nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn", new string('z', 255) })
            for (var v = DxHashVersion.Legacy; v <= DxHashVersion.Tea; v++)
            {
                DxHash.TryCompute(Encoding.ASCII.GetBytes(name), v, seed, out uint a, out uint am);
                DxHash.TryCompute(Encoding.ASCII.GetBytes(name), v + 3, seed, out uint b, out uint bm);
                Assert.Equal((a, am), (b, bm));
            }
    }

    [Theory]
    [InlineData(6)]
    [InlineData(7)]
    [InlineData(255)]
    public void TryCompute_UnsupportedVersion_ReturnsFalse(byte version)
    {
        var v = (DxHashVersion)version;
        var debugfs = Tools.Which("debugfs");
        Assert.False(DxHash.TryCompute("name"u8, v, new uint[4], out _, out _));
        if (debugfs != null && v == DxHashVersion.Siphash)
        {
            // debugfs agrees that SipHash needs a casefolded directory.
            var (_, output) = RunDebugfs(debugfs, [new Case("name"u8.ToArray(), v, new uint[4])]);
            Assert.Contains("unsupported", output);
        }
    }

    [Fact]
    public void TryCompute_ManyCalls_AllocateNothing()
    {
        var seed = new uint[] { 1, 2, 3, 4 };
        var name = new byte[255];
        new Random(7).NextBytes(name);
        uint sink = 0;
        for (var v = DxHashVersion.Legacy; v <= DxHashVersion.TeaUnsigned; v++)
        {
            DxHash.TryCompute(name, v, seed, out uint warm, out _);
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 1000; i++)
            {
                DxHash.TryCompute(name.AsSpan(0, 1 + i % 255), v, seed, out uint major, out uint minor);
                sink += major ^ minor;
            }
            Assert.Equal(before, GC.GetAllocatedBytesForCurrentThread());
            sink += warm;
        }
        Assert.NotEqual(0u, sink);
    }

    /// <summary>
    /// The kernel as oracle, which also covers what e2fsprogs does not do: ext4 moves a major hash
    /// of 0xFFFFFFFE (EXT4_HTREE_EOF_32BIT &lt;&lt; 1) to 0xFFFFFFFC, e2fsprogs leaves it. ext4's
    /// readdir of a hashed directory reports each entry's position as (major &gt;&gt; 1) &lt;&lt; 32 | minor
    /// (hash2pos, 64-bit callers), computed by the kernel from the name with the filesystem's default
    /// hash version, seed and signedness, so telldir before each readdir reveals the kernel's hash.
    /// The names are raw bytes (anything but NUL and '/'), created by the kernel through perl.
    /// "uwtgt6" (legacy, any seed) and "eof" (TEA, seed 0x14f87906,0,0,0) hash to 0xFFFFFFFE before
    /// that adjustment; they were found by brute force.
    /// </summary>
    [Theory]
    [InlineData("legacy", false, "random", "uwtgt6")]
    [InlineData("legacy", true, "zero", "uwtgt6")]
    [InlineData("half_md4", false, "random", "")]
    [InlineData("half_md4", true, "zero", "")]
    [InlineData("tea", false, "0x14f87906", "eof")]
    [InlineData("tea", true, "random", "")]
    public void TryCompute_NamesTheKernelHashed_EqualKernelReaddirPositions(string alg, bool unsignedHash, string seedKind, string eofName)
    {
        if (Environment.UserName != "root") Assert.Skip("needs root to loop-mount an image");
        var mke2fs = Tools.RequireTool("mke2fs");
        var debugfs = Tools.RequireTool("debugfs");
        var perl = Tools.Which("perl") ?? Tools.Which("perl5");
        if (perl == null) Assert.Skip("perl is not installed (creates raw-byte names and reads telldir)");
        int rngSeed = $"{alg}{unsignedHash}{seedKind}".Aggregate(17, (h, c) => h * 31 + c) & 0x7fffffff;
        var rng = new Random(rngSeed);
        uint[] seed = seedKind switch
        {
            "zero" => new uint[4],
            "random" => [(uint)rng.NextInt64(1, 1L << 32), (uint)rng.NextInt64(1L << 32), (uint)rng.NextInt64(1L << 32), (uint)rng.NextInt64(1L << 32)],
            _ => [Convert.ToUInt32(seedKind, 16), 0, 0, 0],
        };
        var version = alg switch { "legacy" => DxHashVersion.Legacy, "half_md4" => DxHashVersion.HalfMd4, _ => DxHashVersion.Tea };
        if (unsignedHash) version += 3;

        var names = new Dictionary<string, byte[]>();
        void Add(byte[] n) { if (n is not [(byte)'.'] and not [(byte)'.', (byte)'.']) names.TryAdd(Convert.ToHexString(n), n); }
        if (eofName.Length > 0) Add(Encoding.ASCII.GetBytes(eofName));
        while (names.Count < 400)
        {
            int len = rng.Next(4) == 0 ? rng.Next(1, 256) : rng.Next(1, 40);
            var n = new byte[len];
            for (int i = 0; i < len; i++)
                do n[i] = (byte)(rng.Next(3) == 0 ? rng.Next(0x80, 0x100) : rng.Next(1, 0x100)); while (n[i] == '/');
            Add(n);
        }

        var img = Path.Combine(Path.GetTempPath(), $"untorn-dxkernel-{Guid.NewGuid():N}.img");
        var mnt = img + ".mnt";
        var listFile = img + ".names";
        try
        {
            using (var f = File.Create(img)) f.SetLength(16L << 20);
            var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", "-t", "ext4", "-b", "1024", img]);
            Assert.True(rc == 0, output);
            // s_flags 1 = signed, 2 = unsigned directory hash; the seed is s_hash_seed's 16 bytes.
            File.WriteAllText(listFile,
                $"ssv flags {(unsignedHash ? 2 : 1)}\nssv hash_seed {SeedUuid(seed)}\nssv def_hash_version {alg}\n");
            (rc, output) = Tools.Run(debugfs, ["-w", "-f", listFile, img]);
            Assert.True(rc == 0 && !output.Contains("nvalid"), output);
            File.WriteAllLines(listFile, names.Keys);
            Directory.CreateDirectory(mnt);
            (rc, output) = Tools.Run("mount", ["-o", "loop", img, mnt]);
            if (rc != 0) Assert.Skip("mount -o loop does not work here: " + output.Trim());
            try
            {
                (rc, output) = Tools.Run(perl!, ["-e", ReaddirPositionsPerl, Path.Combine(mnt, "d"), listFile]);
                Assert.True(rc == 0, output);
            }
            finally { Oracles.Umount(mnt); }

            int compared = 0;
            foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                var parts = line.Split(' ');
                ulong pos = Convert.ToUInt64(parts[0], 16);
                var name = Convert.FromHexString(parts[1]);
                // The first entry is reported at position 0 (start of directory), not at its hash.
                if (pos == 0 || name is [(byte)'.'] or [(byte)'.', (byte)'.']) continue;
                Assert.True(names.ContainsKey(parts[1]), $"unexpected entry {parts[1]}");
                Assert.True(DxHash.TryCompute(name, version, seed, out uint major, out uint minor));
                ulong expected = ((ulong)(major >> 1) << 32) | minor;
                Assert.True(expected == pos,
                    $"{alg} unsigned={unsignedHash} seed={SeedUuid(seed)} name={parts[1]}: kernel {pos:x16}, untorn {expected:x16}");
                if (name.AsSpan().SequenceEqual(Encoding.ASCII.GetBytes(eofName)))
                    Assert.Equal(0xFFFFFFFCu, major);
                compared++;
            }
            Assert.True(compared >= names.Count - 1, $"compared {compared} of {names.Count} names (rng seed {rngSeed})");
        }
        finally
        {
            try { Directory.Delete(mnt); } catch (IOException) { }
            File.Delete(img);
            File.Delete(listFile);
        }
    }

    // Creates DIR and one empty file per hex-encoded name in LIST, then prints "position hexname"
    // for every entry, the position being telldir() just before readdir() returns the entry.
    private const string ReaddirPositionsPerl = """
        use strict; use warnings;
        my ($dir, $list) = @ARGV;
        mkdir $dir or die "$dir: $!";
        open(my $l, '<', $list) or die "$list: $!";
        while (my $h = <$l>) {
            chomp $h;
            open(my $f, '>', "$dir/" . pack('H*', $h)) or die "$h: $!";
            close $f;
        }
        opendir(my $d, $dir) or die "$dir: $!";
        while (1) {
            my $pos = telldir($d);
            my $name = readdir($d);
            last unless defined $name;
            printf "%x %s\n", $pos, uc unpack('H*', $name);
        }
        """;

    /// <summary>debugfs's (major, minor) for each case, in order.</summary>
    private static (uint Major, uint Minor)[] DebugfsDxHash(string debugfs, IReadOnlyList<Case> cases)
    {
        var (rc, output) = RunDebugfs(debugfs, cases);
        Assert.True(rc == 0, output);
        var results = output.Split('\n')
            .Select(l => HashLine().Match(l))
            .Where(m => m.Success)
            .Select(m => (Convert.ToUInt32(m.Groups[1].Value, 16), Convert.ToUInt32(m.Groups[2].Value, 16)))
            .ToArray();
        Assert.True(results.Length == cases.Count,
            $"debugfs answered {results.Length} of {cases.Count} dx_hash commands:\n{output[..Math.Min(output.Length, 4000)]}");
        return results;
    }

    private static (int, string) RunDebugfs(string debugfs, IReadOnlyList<Case> cases)
    {
        var cmdFile = Path.Combine(Path.GetTempPath(), $"untorn-dxhash-{Guid.NewGuid():N}.cmds");
        try
        {
            using (var f = File.Create(cmdFile))
                foreach (var c in cases)
                {
                    // "--" so names starting with '-' are not options; quotes so spaces survive.
                    f.Write(Encoding.ASCII.GetBytes($"dx_hash -h {(int)c.Version} -s {SeedUuid(c.Seed)} -- \""));
                    foreach (byte b in c.Name)
                    {
                        if (b == '"') f.WriteByte(b);
                        f.WriteByte(b);
                    }
                    f.Write("\"\n"u8);
                }
            return Tools.Run(debugfs, ["-f", cmdFile]);
        }
        finally { File.Delete(cmdFile); }
    }

    // s_hash_seed is four little-endian words; debugfs takes the same 16 bytes written as a UUID.
    private static string SeedUuid(uint[] seed)
    {
        Span<byte> b = stackalloc byte[16];
        for (int i = 0; i < 4; i++) BinaryPrimitives.WriteUInt32LittleEndian(b[(i * 4)..], seed[i]);
        var hex = Convert.ToHexStringLower(b);
        return $"{hex[..8]}-{hex[8..12]}-{hex[12..16]}-{hex[16..20]}-{hex[20..]}";
    }

    // The name may contain anything but '\n', so match the fixed tail of the line.
    [GeneratedRegex(@"^Hash of .* is 0x([0-9a-f]+) \(minor 0x([0-9a-f]+)\)$")]
    private static partial Regex HashLine();
}
