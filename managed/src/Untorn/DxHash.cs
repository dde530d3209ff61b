using System.Numerics;

namespace Untorn;

/// <summary>s_def_hash_version / dx_root_info.hash_version; the *Unsigned variants treat name bytes as unsigned chars.</summary>
internal enum DxHashVersion : byte
{
    Legacy = 0, HalfMd4 = 1, Tea = 2, LegacyUnsigned = 3, HalfMd4Unsigned = 4, TeaUnsigned = 5, Siphash = 6,
}

/// <summary>
/// The htree directory hashes (fs/ext4/hash.c): the legacy dx_hack_hash, half MD4 (3 rounds over
/// 32-byte chunks) and TEA (16 cycles over 16-byte chunks), each with the name packed into words
/// either from signed or from unsigned chars, as the superblock's s_flags says.
/// </summary>
internal static class DxHash
{
    private static readonly uint[] DefaultSeed = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    private const uint HtreeEof32 = 0x7fffffff;

    /// <summary>
    /// The major hash (low bit cleared, as ext4 uses the bit for collision chains) and minor hash
    /// of <paramref name="name"/>; false for SipHash, which only casefolded directories use.
    /// </summary>
    public static bool TryCompute(ReadOnlySpan<byte> name, DxHashVersion version, ReadOnlySpan<uint> seed, out uint major, out uint minor)
    {
        Span<uint> buf = stackalloc uint[4];
        (seed.Length == 4 && seed.ContainsAnyExcept(0u) ? seed : DefaultSeed).CopyTo(buf);
        Span<uint> input = stackalloc uint[8];
        uint hash;
        minor = 0;
        switch (version)
        {
            case DxHashVersion.Legacy:
            case DxHashVersion.LegacyUnsigned:
                hash = HackHash(name, version == DxHashVersion.LegacyUnsigned);
                break;
            case DxHashVersion.HalfMd4:
            case DxHashVersion.HalfMd4Unsigned:
                for (int p = 0; p < name.Length; p += 32)
                {
                    PackWords(name[p..], input, 8, version == DxHashVersion.HalfMd4Unsigned);
                    HalfMd4Transform(buf, input);
                }
                hash = buf[1];
                minor = buf[2];
                break;
            case DxHashVersion.Tea:
            case DxHashVersion.TeaUnsigned:
                for (int p = 0; p < name.Length; p += 16)
                {
                    PackWords(name[p..], input[..4], 4, version == DxHashVersion.TeaUnsigned);
                    TeaTransform(buf, input);
                }
                hash = buf[0];
                minor = buf[1];
                break;
            default:
                major = 0;
                return false;
        }
        hash &= ~1u;
        if (hash == HtreeEof32 << 1) hash = (HtreeEof32 - 1) << 1;
        major = hash;
        return true;
    }

    // dx_hack_hash: the ext3 hash, kept for old directories.
    private static uint HackHash(ReadOnlySpan<byte> name, bool unsigned)
    {
        uint hash0 = 0x12a3fe2d, hash1 = 0x37abe8f9;
        foreach (byte b in name)
        {
            int c = unsigned ? b : (sbyte)b;
            uint hash = hash1 + (hash0 ^ (uint)(c * 7152373));
            if ((hash & 0x80000000) != 0) hash -= 0x7fffffff;
            hash1 = hash0;
            hash0 = hash;
        }
        return hash0 << 1;
    }

    // str2hashbuf: big-endian-ish packing of up to 4*words bytes, padded with a length-derived word.
    private static void PackWords(ReadOnlySpan<byte> msg, Span<uint> output, int words, bool unsigned)
    {
        uint pad = (uint)msg.Length | ((uint)msg.Length << 8);
        pad |= pad << 16;
        uint val = pad;
        int len = Math.Min(msg.Length, words * 4);
        int o = 0;
        for (int i = 0; i < len; i++)
        {
            int c = unsigned ? msg[i] : (sbyte)msg[i];
            val = (uint)c + (val << 8);
            if (i % 4 == 3)
            {
                output[o++] = val;
                val = pad;
            }
        }
        if (o < words) output[o++] = val;
        while (o < words) output[o++] = pad;
    }

    private static void TeaTransform(Span<uint> buf, ReadOnlySpan<uint> input)
    {
        const uint delta = 0x9E3779B9;
        uint sum = 0, b0 = buf[0], b1 = buf[1];
        uint a = input[0], b = input[1], c = input[2], d = input[3];
        for (int n = 0; n < 16; n++)
        {
            sum += delta;
            b0 += ((b1 << 4) + a) ^ (b1 + sum) ^ ((b1 >> 5) + b);
            b1 += ((b0 << 4) + c) ^ (b0 + sum) ^ ((b0 >> 5) + d);
        }
        buf[0] += b0;
        buf[1] += b1;
    }

    private static uint F(uint x, uint y, uint z) => z ^ (x & (y ^ z));
    private static uint G(uint x, uint y, uint z) => (x & y) + ((x ^ y) & z);
    private static uint H(uint x, uint y, uint z) => x ^ y ^ z;

    // MD4 cut to three rounds of eight steps, over eight input words.
    private static void HalfMd4Transform(Span<uint> buf, ReadOnlySpan<uint> x)
    {
        const uint k2 = 0x5A827999, k3 = 0x6ED9EBA1;
        uint a = buf[0], b = buf[1], c = buf[2], d = buf[3];

        a = BitOperations.RotateLeft(a + F(b, c, d) + x[0], 3);
        d = BitOperations.RotateLeft(d + F(a, b, c) + x[1], 7);
        c = BitOperations.RotateLeft(c + F(d, a, b) + x[2], 11);
        b = BitOperations.RotateLeft(b + F(c, d, a) + x[3], 19);
        a = BitOperations.RotateLeft(a + F(b, c, d) + x[4], 3);
        d = BitOperations.RotateLeft(d + F(a, b, c) + x[5], 7);
        c = BitOperations.RotateLeft(c + F(d, a, b) + x[6], 11);
        b = BitOperations.RotateLeft(b + F(c, d, a) + x[7], 19);

        a = BitOperations.RotateLeft(a + G(b, c, d) + x[1] + k2, 3);
        d = BitOperations.RotateLeft(d + G(a, b, c) + x[3] + k2, 5);
        c = BitOperations.RotateLeft(c + G(d, a, b) + x[5] + k2, 9);
        b = BitOperations.RotateLeft(b + G(c, d, a) + x[7] + k2, 13);
        a = BitOperations.RotateLeft(a + G(b, c, d) + x[0] + k2, 3);
        d = BitOperations.RotateLeft(d + G(a, b, c) + x[2] + k2, 5);
        c = BitOperations.RotateLeft(c + G(d, a, b) + x[4] + k2, 9);
        b = BitOperations.RotateLeft(b + G(c, d, a) + x[6] + k2, 13);

        a = BitOperations.RotateLeft(a + H(b, c, d) + x[3] + k3, 3);
        d = BitOperations.RotateLeft(d + H(a, b, c) + x[7] + k3, 9);
        c = BitOperations.RotateLeft(c + H(d, a, b) + x[2] + k3, 11);
        b = BitOperations.RotateLeft(b + H(c, d, a) + x[6] + k3, 15);
        a = BitOperations.RotateLeft(a + H(b, c, d) + x[1] + k3, 3);
        d = BitOperations.RotateLeft(d + H(a, b, c) + x[5] + k3, 9);
        c = BitOperations.RotateLeft(c + H(d, a, b) + x[0] + k3, 11);
        b = BitOperations.RotateLeft(b + H(c, d, a) + x[4] + k3, 15);

        buf[0] += a;
        buf[1] += b;
        buf[2] += c;
        buf[3] += d;
    }
}
