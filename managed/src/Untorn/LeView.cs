using System.Buffers.Binary;

namespace Untorn;

/// <summary>Little-endian field reads at byte offsets of an on-disk structure.</summary>
internal readonly ref struct LeView(ReadOnlySpan<byte> data)
{
    private readonly ReadOnlySpan<byte> _data = data;

    public byte U8(int offset) => _data[offset];
    public ushort U16(int offset) => BinaryPrimitives.ReadUInt16LittleEndian(_data[offset..]);
    public uint U32(int offset) => BinaryPrimitives.ReadUInt32LittleEndian(_data[offset..]);
}
