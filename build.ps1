# Thin wrapper over the CMake workflow presets (the same commands the README gives):
#   ./build.ps1          -> cmake --workflow --preset test
#   ./build.ps1 demo     -> cmake --workflow --preset demo
param([ValidateSet('test', 'demo')][string]$Preset = 'test')
cmake --workflow --preset $Preset
exit $LASTEXITCODE
