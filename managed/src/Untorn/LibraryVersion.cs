namespace Untorn;

/// <summary>The library version reported by untorn_version.</summary>
public static class LibraryVersion
{
    public const int Major = 0, Minor = 1, Patch = 0;
    public const string Text = "0.1.0";
}
