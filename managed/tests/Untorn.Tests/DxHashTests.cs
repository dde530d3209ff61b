using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// The htree hashes against debugfs's dx_hash (libext2fs's ext2fs_dirhash, written independently of
/// the kernel and of us): every algorithm, signed and unsigned, zero and random seeds, names of
/// every length around the 16- and 32-byte chunk edges, with bytes >= 0x80.
/// </summary>
public partial class DxHashTests
{
    [GeneratedRegex(@"Hash of .* is 0x([0-9a-f]+) \(minor 0x([0-9a-f]+)\)")]
    private static partial Regex HashLine();

    // Bytes debugfs's command parser passes through unchanged: no whitespace, quotes, backslash, NUL,
    // '#' or control characters; everything else, high bytes included, is fair game.
    private static byte[] RandomName(Random rng, int length)
    {
        var name = new byte[length];
        for (int i = 0; i < length; i++)
        {
            byte b;
            do b = (byte)rng.Next(0x21, 0x100);
            while (b is (byte)'"' or (byte)'\'' or (byte)'\\' or (byte)'#' or 0x7f);
            name[i] = b;
        }
        return name;
    }

    [Fact]
    public void TryCompute_RandomNamesSeedsAndAlgorithms_EqualDebugfsDxHash()
    {
        var debugfs = Tools.RequireTool("debugfs");
        var mke2fs = Tools.RequireTool("mke2fs");
        var dir = Path.Combine(Path.GetTempPath(), $"untorn-dxhash-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            var image = Path.Combine(dir, "fs.img");
            using (var f = File.Create(image)) f.SetLength(4 << 20);
            var (rc, output) = Tools.Run(mke2fs, ["-q", "-F", "-t", "ext4", image]);
            Assert.True(rc == 0, output);

            var rng = new Random(20261124);
            var cases = new List<(byte[] Name, DxHashVersion Version, uint[] Seed)>();
            int[] lengths = [.. Enumerable.Range(1, 70), 100, 127, 128, 129, 200, 254, 255];
            foreach (int len in lengths)
                for (int v = 0; v <= 5; v++)
                {
                    uint[] seed = rng.Next(3) == 0 ? [0, 0, 0, 0] : [(uint)rng.Next(), (uint)rng.Next(), (uint)rng.Next(), (uint)rng.Next()];
                    cases.Add((RandomName(rng, len), (DxHashVersion)v, seed));
                }

            var commands = new System.Text.StringBuilder();
            foreach (var (name, version, seed) in cases)
                commands.Append($"dx_hash -h {(int)version} -s {SeedAsUuid(seed)} -- ").Append(Latin1(name)).Append('\n');
            var cmdFile = Path.Combine(dir, "cmds");
            File.WriteAllBytes(cmdFile, System.Text.Encoding.Latin1.GetBytes(commands.ToString()));
            (rc, output) = Tools.Run(debugfs, ["-f", cmdFile, image]);
            Assert.True(rc == 0, output);
            var results = HashLine().Matches(output);
            Assert.Equal(cases.Count, results.Count);

            for (int i = 0; i < cases.Count; i++)
            {
                var (name, version, seed) = cases[i];
                Assert.True(DxHash.TryCompute(name, version, seed, out uint major, out uint minor));
                uint wantMajor = Convert.ToUInt32(results[i].Groups[1].Value, 16), wantMinor = Convert.ToUInt32(results[i].Groups[2].Value, 16);
                Assert.True(wantMajor == major && wantMinor == minor,
                    $"{version} seed {SeedAsUuid(seed)} name {Convert.ToHexString(name)}: debugfs 0x{wantMajor:x8}/0x{wantMinor:x8}, ours 0x{major:x8}/0x{minor:x8}");
            }
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void TryCompute_Siphash_ReportsUnsupported() =>
        Assert.False(DxHash.TryCompute("a"u8, DxHashVersion.Siphash, [1, 2, 3, 4], out _, out _));

    private static string Latin1(byte[] name) => System.Text.Encoding.Latin1.GetString(name);

    // debugfs parses -s as a UUID: its 16 bytes are the four seed words in little-endian order.
    private static string SeedAsUuid(uint[] seed)
    {
        var bytes = new byte[16];
        for (int i = 0; i < 4; i++) System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4 * i), seed[i]);
        var hex = Convert.ToHexString(bytes).ToLowerInvariant();
        return $"{hex[..8]}-{hex[8..12]}-{hex[12..16]}-{hex[16..20]}-{hex[20..]}";
    }
}
