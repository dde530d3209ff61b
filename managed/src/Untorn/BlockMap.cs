namespace Untorn;

/// <summary>A run of logical blocks and where it lives: Physical 0 means a hole.</summary>
public readonly record struct BlockRun(ulong Logical, ulong Physical, ulong Length, bool Unwritten)
{
    public bool IsHole => Physical == 0;
}

/// <summary>
/// Maps a file's logical blocks to physical ones. One mapper serves one operation, so it may keep
/// the last metadata block it read (a sequential read does not walk the tree again per block).
/// </summary>
internal abstract class BlockMapper
{
    /// <summary>The run containing <paramref name="logical"/>, at most <paramref name="maxLength"/> blocks long.</summary>
    public abstract BlockRun Map(ulong logical, ulong maxLength);

    public static BlockMapper For(Ext4Fs fs, Inode inode) => inode.HasExtents
        ? new ExtentMapper(fs, inode)
        : new IndirectMapper(fs, inode);
}
