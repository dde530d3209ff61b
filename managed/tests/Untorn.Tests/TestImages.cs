using System.Diagnostics;

namespace Untorn.Tests;

/// <summary>
/// The images made by c-tests/fixtures/make-test-images.sh (mke2fs -d from a generated tree, then
/// e2fsck -fyD and e2fsck -fn). CTest passes their folder in UNTORN_TEST_IMAGES; a plain
/// `dotnet test` builds them once into a temporary folder.
/// </summary>
public static class TestImages
{
    private static readonly Lazy<(string? Dir, string? SkipReason)> Built = new(Build);

    public static string RepoRoot { get; } = FindRepoRoot();

    public static string Dir => Require().Dir!;
    public static string Tree => Path.Combine(Dir, "tree");
    public static string ImagePath(string config) => Path.Combine(Dir, config + ".img");

    public static IReadOnlyList<string> Configs =>
        File.ReadAllLines(Path.Combine(Dir, "configs.txt")).Where(l => l.Length > 0).ToArray();

    /// <summary>
    /// Files mke2fs itself copied wrongly into this config's image (found by debugfs in the fixture
    /// script); tests leave them out and print that they did.
    /// </summary>
    public static HashSet<string> MkfsDefects(string config)
    {
        var path = Path.Combine(Dir, config + ".mke2fs-defects");
        var set = File.Exists(path) ? File.ReadAllLines(path).Where(l => l.Length > 0).ToHashSet() : [];
        if (set.Count > 0)
            TestContext.Current.SendDiagnosticMessage($"{config}: not compared (mke2fs copied them wrongly): {string.Join(", ", set)}");
        return set;
    }

    /// <summary>The configs the script makes; the list is checked against configs.txt by a test.</summary>
    public static readonly string[] ExpectedConfigs =
        ["ext4-4k", "ext4-1k", "ext4-no64-nocsum", "ext4-bigalloc", "ext3", "ext4-inline", "ext4-128inode", "ext4-metabg"];

    public static TheoryData<string> ConfigData => new(ExpectedConfigs);

    /// <summary>Skips the calling test (with the reason printed) when the images cannot be made here.</summary>
    public static (string Dir, string SkipReason) Require()
    {
        var (dir, reason) = Built.Value;
        if (dir == null) Assert.Skip(reason ?? "test images unavailable");
        return (dir, "");
    }

    /// <summary>A private copy of a config's image, for tests that damage or modify it.</summary>
    public static string CopyOf(string config)
    {
        var copy = Path.Combine(Path.GetTempPath(), $"untorn-{config}-{Guid.NewGuid():N}.img");
        File.Copy(ImagePath(config), copy);
        return copy;
    }

    private static (string?, string?) Build()
    {
        string dir = Environment.GetEnvironmentVariable("UNTORN_TEST_IMAGES") is { Length: > 0 } env
            ? env
            : Path.Combine(Path.GetTempPath(), "untorn-test-images");
        var script = Path.Combine(RepoRoot, "c-tests", "fixtures", "make-test-images.sh");
        var (rc, output) = Tools.Run("bash", [script, dir], TimeSpan.FromMinutes(10));
        if (rc == 77) return (null, "test images skipped: " + output.Trim());
        if (rc != 0) throw new InvalidOperationException($"make-test-images.sh failed ({rc}):\n{output}");
        return (dir, null);
    }

    private static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "c-tests", "fixtures", "make-test-images.sh")))
                return d.FullName;
        throw new InvalidOperationException("cannot find the repository root from " + AppContext.BaseDirectory);
    }
}

/// <summary>Runs the system tools that serve as oracles (e2fsprogs, mount).</summary>
public static class Tools
{
    public static (int ExitCode, string Output) Run(string file, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["PATH"] = Environment.GetEnvironmentVariable("PATH") + ":/sbin:/usr/sbin";
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + file);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout ?? TimeSpan.FromMinutes(2)))
        {
            p.Kill(true);
            throw new TimeoutException($"{file} timed out");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    /// <summary>umount (retried while busy, see <see cref="Oracles.Umount"/>); throws if it stays mounted.</summary>
    public static void Umount(string dir)
    {
        var (rc, output) = Oracles.Umount(dir);
        if (rc != 0) throw new InvalidOperationException($"umount {dir} failed: {output.Trim()}");
    }

    public static string? Which(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") + ":/sbin:/usr/sbin").Split(':'))
            if (dir.Length > 0 && File.Exists(Path.Combine(dir, tool))) return Path.Combine(dir, tool);
        return null;
    }

    public static string RequireTool(string tool)
    {
        var path = Which(tool);
        if (path == null) Assert.Skip($"{tool} is not installed (apt-get install e2fsprogs)");
        return path!;
    }
}
