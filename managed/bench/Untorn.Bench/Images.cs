using System.Diagnostics;

namespace Untorn.Bench;

/// <summary>Sparse image files made by mke2fs, deleted when the bench ends (or at the next call).</summary>
internal static class Images
{
    private static readonly List<string> Made = [];

    /// <summary>The path of a tool under PATH or /sbin, /usr/sbin; null when missing.</summary>
    public static string? Which(string tool)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") + ":/sbin:/usr/sbin").Split(':'))
            if (dir.Length > 0 && File.Exists(Path.Combine(dir, tool))) return Path.Combine(dir, tool);
        return null;
    }

    /// <summary>mke2fs -t ext4 -b 4096 on a new sparse file of <paramref name="bytes"/> (inode tables and journal initialized lazily).</summary>
    public static string Make(string dir, string name, long bytes)
    {
        string path = Path.Combine(dir, name);
        File.Delete(path);
        using (var f = new FileStream(path, FileMode.CreateNew)) f.SetLength(bytes);
        Made.Add(path);
        Run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-E", "lazy_itable_init=1,lazy_journal_init=1", path);
        return path;
    }

    public static void Delete(string path)
    {
        File.Delete(path);
        Made.Remove(path);
    }

    public static void DeleteAll()
    {
        foreach (var p in Made) File.Delete(p);
        Made.Clear();
    }

    /// <summary>Runs a tool, returning its exit code and output; throws if it cannot be started.</summary>
    public static (int Code, string Output) TryRun(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(Which(tool) ?? tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {tool}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    public static string Run(string tool, params string[] args)
    {
        var (code, output) = TryRun(tool, args);
        if (code != 0) throw new InvalidOperationException($"{tool} {string.Join(' ', args)} failed ({code}): {output}");
        return output;
    }
}

/// <summary>Latency samples in Stopwatch ticks.</summary>
internal sealed class Samples(int capacity)
{
    private readonly List<long> _ticks = new(capacity);
    public int Count => _ticks.Count;
    public long TotalTicks { get; private set; }

    public void Add(long ticks)
    {
        _ticks.Add(ticks);
        TotalTicks += ticks;
    }

    /// <summary>The p-th percentile in microseconds (nearest rank).</summary>
    public double PercentileUs(double p)
    {
        if (_ticks.Count == 0) return double.NaN;
        var sorted = _ticks.Order().ToArray();
        int rank = (int)Math.Ceiling(p / 100 * sorted.Length) - 1;
        return sorted[Math.Clamp(rank, 0, sorted.Length - 1)] * 1e6 / Stopwatch.Frequency;
    }

    /// <summary>Operations per second of timed work.</summary>
    public double PerSecond => TotalTicks == 0 ? double.NaN : Count * (double)Stopwatch.Frequency / TotalTicks;
}

/// <summary>A plain-text table, columns padded to their widest cell.</summary>
internal sealed class Table(params string[] headers)
{
    private readonly List<string[]> _rows = [];

    public void Add(params string[] cells) => _rows.Add(cells);

    public void Print()
    {
        var widths = headers.Select(h => h.Length).ToArray();
        foreach (var r in _rows)
            for (int i = 0; i < r.Length; i++) widths[i] = Math.Max(widths[i], r[i].Length);
        string Line(string[] cells) => string.Join("  ", cells.Select((c, i) => i == 0 ? c.PadRight(widths[i]) : c.PadLeft(widths[i]))).TrimEnd();
        Console.WriteLine(Line(headers));
        Console.WriteLine(string.Join("  ", widths.Select(w => new string('-', w))));
        foreach (var r in _rows) Console.WriteLine(Line(r));
        Console.WriteLine();
    }
}
