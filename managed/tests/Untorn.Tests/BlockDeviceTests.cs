namespace Untorn.Tests;

/// <summary>The backing-store layer: the atomic-write capability a device reports.</summary>
public class BlockDeviceTests
{
    [Fact]
    public void AtomicWrite_MemoryDevice_IsNone()
    {
        using IBlockDevice dev = new MemoryBlockDevice(new byte[4096]);
        Assert.False(dev.AtomicWrite.Supported);
    }

    /// <summary>
    /// XFS with reflink serves software atomic writes (Linux 6.13+): the unit range the kernel
    /// reports for a file there starts at the XFS block size, which xfs_info tells independently.
    /// </summary>
    [Fact]
    public void AtomicWrite_FileOnXfsWithReflink_ReportsHostRange()
    {
        if (Environment.UserName != "root") Assert.Skip("needs root for mount -o loop");
        var mkfs = Tools.Which("mkfs.xfs");
        if (mkfs == null) Assert.Skip("mkfs.xfs is not installed (apt-get install xfsprogs)");
        var image = Path.Combine(Path.GetTempPath(), $"untorn-xfs-{Guid.NewGuid():N}.img");
        var dir = image + ".mnt";
        using (var f = File.Create(image)) f.SetLength(512L << 20);
        try
        {
            var (rc, output) = Tools.Run(mkfs, ["-q", "-f", "-m", "reflink=1", image]);
            Assert.True(rc == 0, output);
            Directory.CreateDirectory(dir);
            (rc, output) = Tools.Run("mount", ["-o", "loop", image, dir]);
            if (rc != 0) Assert.Skip("mount -o loop of XFS does not work here: " + output.Trim());
            try
            {
                var info = Tools.Run("xfs_info", [dir]).Output;
                var bsize = uint.Parse(System.Text.RegularExpressions.Regex.Match(info, @"^data\s+=\s+bsize=(\d+)", System.Text.RegularExpressions.RegexOptions.Multiline).Groups[1].Value);
                var file = Path.Combine(dir, "backing.img");
                using (var f = File.Create(file)) f.SetLength(16L << 20);
                using var dev = new FileBlockDevice(file, readOnly: false);
                if (!dev.AtomicWrite.Supported)
                    Assert.Skip($"this kernel ({Environment.OSVersion.Version}) serves no atomic writes on XFS");
                Assert.Equal(bsize, dev.AtomicWrite.UnitMin);
                Assert.True(dev.AtomicWrite.UnitMax >= dev.AtomicWrite.UnitMin);
                Assert.True(System.Numerics.BitOperations.IsPow2(dev.AtomicWrite.UnitMax));
                Assert.True(dev.AtomicWrite.SegmentsMax >= 1);
            }
            finally { Oracles.Umount(dir); }
        }
        finally
        {
            File.Delete(image);
            if (Directory.Exists(dir)) Directory.Delete(dir);
        }
    }
}
