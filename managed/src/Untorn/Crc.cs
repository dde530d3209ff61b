using System.Buffers.Binary;
using System.Numerics;

namespace Untorn;

/// <summary>
/// The checksums ext4 uses: crc32c without the final inversion (ext4_chksum) for metadata_csum,
/// and crc16 (poly 0x8005, reflected) for the older uninit_bg group descriptor checksum.
/// </summary>
internal static class Crc
{
    public static uint Crc32c(uint crc, ReadOnlySpan<byte> data)
    {
        while (data.Length >= 8)
        {
            crc = BitOperations.Crc32C(crc, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }
        foreach (byte b in data) crc = BitOperations.Crc32C(crc, b);
        return crc;
    }

    public static uint Crc32c(uint crc, uint le32Value)
    {
        return BitOperations.Crc32C(crc, le32Value);
    }

    /// <summary>crc32c over a span in which [skipAt, skipAt+skipLen) is read as zeros (a checksum field).</summary>
    public static uint Crc32cSkipping(uint crc, ReadOnlySpan<byte> data, int skipAt, int skipLen)
    {
        crc = Crc32c(crc, data[..skipAt]);
        for (int i = 0; i < skipLen; i++) crc = BitOperations.Crc32C(crc, (byte)0);
        return Crc32c(crc, data[(skipAt + skipLen)..]);
    }

    public static ushort Crc16(ushort crc, ReadOnlySpan<byte> data)
    {
        foreach (byte b in data)
        {
            crc ^= b;
            for (int i = 0; i < 8; i++)
                crc = (crc & 1) != 0 ? (ushort)((crc >> 1) ^ 0xA001) : (ushort)(crc >> 1);
        }
        return crc;
    }
}
