using Untorn.HeaderGen;

// untorn-headergen header <untorn.h>   write the header generated from Untorn.Native's exports
// untorn-headergen check <untorn.h>    exit 1 if the committed header differs from the generated one
// untorn-headergen layout <file.c>     write static_asserts holding the CLR's struct layout
if (args.Length != 2 || args[0] is not ("header" or "check" or "layout")) return Usage();
string path = args[1];
var api = NativeApi.Load(typeof(Untorn.Native.Exports).Assembly);

switch (args[0])
{
    case "layout":
        File.WriteAllText(path, LayoutCheckWriter.Write(api, "untorn.h"));
        return 0;
    case "header":
        File.WriteAllText(path, HeaderWriter.Write(api));
        Console.WriteLine($"wrote {path}");
        return 0;
}
string text = HeaderWriter.Write(api);
string current = File.Exists(path) ? File.ReadAllText(path) : "";
if (current == text)
{
    Console.WriteLine($"{path} is up to date");
    return 0;
}
Console.Error.WriteLine($"{path} is stale: it differs from what the C# exports generate.");
Console.Error.WriteLine(FirstDifference(current, text));
Console.Error.WriteLine("Regenerate it: cmake --build <build dir> --target untorn_header");
return 1;

static int Usage()
{
    Console.Error.WriteLine("usage: untorn-headergen header|check <untorn.h> | layout <file.c>");
    return 2;
}

static string FirstDifference(string current, string expected)
{
    var a = current.Split('\n');
    var b = expected.Split('\n');
    for (int i = 0; i < Math.Max(a.Length, b.Length); i++)
    {
        string x = i < a.Length ? a[i] : "<end of file>", y = i < b.Length ? b[i] : "<end of file>";
        if (x != y) return $"first difference at line {i + 1}:\n  committed: {x}\n  generated: {y}";
    }
    return "(line endings differ)";
}
