using System.Text.RegularExpressions;

namespace Untorn.Tests;

/// <summary>
/// The tools we did not write, as oracles for images untorn changed: e2fsck -fn, debugfs (file
/// contents and leaf extents, many files in one process) and the kernel through a loop mount.
/// </summary>
public static partial class Oracles
{
    public static void AssertFsckClean(string image, string label)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("e2fsck"), ["-fn", image]);
        Assert.True(rc == 0, $"{label}: e2fsck -fn exit {rc}\n{output}");
    }

    [GeneratedRegex(@"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*(Uninit)?\s*$", RegexOptions.Multiline)]
    private static partial Regex ExtentLine();

    /// <summary>A leaf extent in blocks, as debugfs's "ex" prints it.</summary>
    public readonly record struct DebugfsExtent(ulong Logical, ulong Physical, ulong Length, bool Unwritten);

    /// <summary>Leaf extents of one file as debugfs sees them.</summary>
    public static List<DebugfsExtent> DebugfsExtents(string image, string path)
    {
        var (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-R", $"ex \"{path}\"", image]);
        Assert.True(rc == 0, output);
        return ParseExtents(output);
    }

    private static List<DebugfsExtent> ParseExtents(string output) =>
        ExtentLine().Matches(output).Where(m => m.Groups[1].Value == m.Groups[2].Value)
            .Select(m => new DebugfsExtent(ulong.Parse(m.Groups[3].Value), ulong.Parse(m.Groups[5].Value), ulong.Parse(m.Groups[7].Value), m.Groups[8].Success)).ToList();

    /// <summary>
    /// Contents and leaf extents of many files from one debugfs process ("debugfs -f" echoes each
    /// command, which separates the outputs). A file debugfs cannot dump comes back null.
    /// </summary>
    public static Dictionary<string, (byte[]? Data, List<DebugfsExtent> Extents)> DebugfsDumpAll(string image, IReadOnlyList<string> paths)
    {
        // thousands of small files: tmpfs when there is one (creating them on disk costs seconds)
        var dir = Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), $"untorn-dumps-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            var cmds = Path.Combine(dir, "cmds");
            File.WriteAllLines(cmds, paths.SelectMany((p, i) => new[] { $"dump \"{p}\" {dir}/{i}", $"ex \"{p}\"" }));
            var (rc, output) = Tools.Run(Tools.RequireTool("debugfs"), ["-f", cmds, image], TimeSpan.FromMinutes(5));
            Assert.True(rc == 0, output);
            // stdout comes first in Tools.Run's output; the sections start at each echoed command
            var sections = output.Split("debugfs: ");
            var extents = new Dictionary<string, List<DebugfsExtent>>();
            foreach (var s in sections.Where(s => s.StartsWith("ex \"")))
            {
                int end = s.IndexOf('"', 4);
                extents[s[4..end]] = ParseExtents(s[(end + 1)..]);
            }
            var result = new Dictionary<string, (byte[]?, List<DebugfsExtent>)>();
            for (int i = 0; i < paths.Count; i++)
            {
                var f = Path.Combine(dir, i.ToString());
                result[paths[i]] = (File.Exists(f) ? File.ReadAllBytes(f) : null, extents.GetValueOrDefault(paths[i]) ?? []);
            }
            return result;
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>
    /// umount, tried again for a few seconds while the kernel says the mount is busy (seen under
    /// parallel test load, where a moment later it succeeds).
    /// </summary>
    public static (int ExitCode, string Output) Umount(string dir)
    {
        for (int attempt = 0; ; attempt++)
        {
            var (rc, output) = Tools.Run("umount", [dir]);
            if (rc == 0 || attempt == 15 || !output.Contains("busy", StringComparison.OrdinalIgnoreCase)) return (rc, output);
            Thread.Sleep(200);
        }
    }

    /// <summary>
    /// A loop mount of an image (root only). <see cref="TryMount"/> returns null with the reason
    /// when this machine cannot mount it; disposing unmounts and removes the mount point.
    /// </summary>
    public sealed class LoopMount : IDisposable
    {
        public string Dir { get; }
        private bool _mounted;

        private LoopMount(string dir) => Dir = dir;

        public static LoopMount? TryMount(string image, bool readOnly, out string reason)
        {
            reason = "";
            if (Environment.UserName != "root")
            {
                reason = "not root: mount -o loop is not available";
                return null;
            }
            var m = new LoopMount(image + $".mnt-{Guid.NewGuid():N}");
            Directory.CreateDirectory(m.Dir);
            var (rc, output) = Tools.Run("mount", ["-o", readOnly ? "loop,ro" : "loop", image, m.Dir]);
            if (rc != 0)
            {
                Directory.Delete(m.Dir);
                reason = "mount -o loop failed: " + output.Trim();
                return null;
            }
            m._mounted = true;
            return m;
        }

        /// <summary>Unmounts now (asserting it worked), so the image can be checked or reopened.</summary>
        public void Unmount()
        {
            if (!_mounted) return;
            var (rc, output) = Umount(Dir);
            Assert.True(rc == 0, output);
            _mounted = false;
        }

        public void Dispose()
        {
            if (_mounted) Umount(Dir);
            _mounted = false;
            try { Directory.Delete(Dir); } catch (IOException) { }
        }
    }

    /// <summary>Writes a note to the test's output (shown with the results), e.g. why an oracle was not run.</summary>
    public static void Note(string message) => TestContext.Current.TestOutputHelper?.WriteLine(message);
}
