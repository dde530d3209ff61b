using System.Buffers.Binary;

namespace Untorn;

/// <summary>
/// The ext2/ext3 block map: 12 direct pointers, then single, double and triple indirect blocks.
/// Zero pointers are holes. Indirect blocks read during one operation are kept for its duration.
/// </summary>
internal sealed class IndirectMapper(Ext4Fs fs, Inode inode) : BlockMapper
{
    private const int Direct = 12;
    private readonly Dictionary<ulong, byte[]> _blocks = [];
    private readonly int _perBlockBits = fs.Super.LogBlockSize + 10 - 2;

    public override BlockRun Map(ulong logical, ulong maxLength)
    {
        ulong first = Lookup(logical);
        ulong len = 1;
        // Extend the run while the next pointers are contiguous (or, for holes, also holes).
        while (len < maxLength && len < 1024)
        {
            ulong next = Lookup(logical + len);
            if (first == 0 ? next != 0 : next != first + len) break;
            len++;
        }
        return new BlockRun(logical, first, len, false);
    }

    private ulong Lookup(ulong logical)
    {
        ulong per = 1UL << _perBlockBits;
        if (logical < Direct) return Pointer(inode.BlockArray, (int)logical);
        logical -= Direct;
        int slot = Direct, levels = 1;
        ulong span = per;
        while (logical >= span)
        {
            logical -= span;
            slot++;
            levels++;
            span <<= _perBlockBits;
            if (levels > 3) return 0; // beyond the triple-indirect range: no such block
        }
        ulong ptr = Pointer(inode.BlockArray, slot);
        for (int level = levels - 1; level >= 0 && ptr != 0; level--)
        {
            var block = Load(ptr);
            int index = (int)((logical >> (_perBlockBits * level)) & (per - 1));
            ptr = Pointer(block, index);
        }
        return ptr;
    }

    private ulong Pointer(ReadOnlySpan<byte> table, int index)
    {
        uint p = BinaryPrimitives.ReadUInt32LittleEndian(table[(index * 4)..]);
        if (p != 0) fs.CheckDataBlocks(p, 1, $"inode {inode.Number}: block map");
        return p;
    }

    private byte[] Load(ulong pblk)
    {
        if (!_blocks.TryGetValue(pblk, out var b))
        {
            b = fs.ReadBlock(pblk);
            _blocks[pblk] = b;
        }
        return b;
    }
}
