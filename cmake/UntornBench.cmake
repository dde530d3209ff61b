# The benchmarks (managed/bench/Untorn.Bench): aligned allocation (issue 3) and journal commits
# (issue 4). Built with the tree; `cmake --workflow --preset bench` runs the full bench (label
# bench, printed with verbose output); bench.smoke runs `--quick` in the normal test run and only
# checks that it completes — numbers never fail a test.
set(UNTORN_BENCH_DIR "${CMAKE_BINARY_DIR}/bench")
set(UNTORN_BENCH_DLL "${UNTORN_BENCH_DIR}/Untorn.Bench.dll")
set(UNTORN_BENCH_WORK "${CMAKE_BINARY_DIR}/bench-work")
file(GLOB UNTORN_BENCH_SOURCES CONFIGURE_DEPENDS
  "${UNTORN_MANAGED_DIR}/bench/Untorn.Bench/*.cs" "${UNTORN_MANAGED_DIR}/bench/Untorn.Bench/*.csproj")

add_custom_command(
  OUTPUT "${UNTORN_BENCH_DLL}"
  COMMAND "${DOTNET_EXECUTABLE}" build "${UNTORN_MANAGED_DIR}/bench/Untorn.Bench/Untorn.Bench.csproj"
          -c ${UNTORN_DOTNET_CONFIG} --nologo -v quiet -o "${UNTORN_BENCH_DIR}"
  DEPENDS ${UNTORN_MANAGED_SOURCES} ${UNTORN_BENCH_SOURCES} "${UNTORN_MANAGED_DIR}/Directory.Build.props"
  COMMENT "dotnet build Untorn.Bench"
  VERBATIM)
add_custom_target(untorn_bench ALL DEPENDS "${UNTORN_BENCH_DLL}")
# The bench builds the engine's project too, into the same obj/ folders as dotnet publish
# (untorn_native) and the header generator's build: never run them at once.
add_dependencies(untorn_bench untorn_headergen)

add_test(NAME bench
  COMMAND "${DOTNET_EXECUTABLE}" "${UNTORN_BENCH_DLL}" all --dir "${UNTORN_BENCH_WORK}/full")
set_tests_properties(bench PROPERTIES LABELS bench TIMEOUT 3600 RUN_SERIAL TRUE)

add_test(NAME bench.smoke
  COMMAND "${DOTNET_EXECUTABLE}" "${UNTORN_BENCH_DLL}" all --quick --dir "${UNTORN_BENCH_WORK}/smoke")
set_tests_properties(bench.smoke PROPERTIES LABELS smoke TIMEOUT 300)
