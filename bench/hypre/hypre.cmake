# hypre.cmake — the hypre PFMG peer benchmark (bench/hypre/bench_hypre.c), built only when
# MPI (C) and hypre are found. Included from the top-level CMakeLists.txt.
find_package(MPI QUIET COMPONENTS C)
find_path(RB_HYPRE_INCLUDE_DIR HYPRE.h PATHS /usr/include/hypre PATH_SUFFIXES hypre)
find_library(RB_HYPRE_LIBRARY HYPRE)

if(NOT MPI_C_FOUND)
  message(STATUS "resbridge: MPI (C) not found; bench_hypre skipped (apt-get install libopenmpi-dev)")
elseif(NOT RB_HYPRE_INCLUDE_DIR OR NOT RB_HYPRE_LIBRARY)
  message(STATUS "resbridge: hypre not found; bench_hypre skipped (apt-get install libhypre-dev)")
else()
  message(STATUS "resbridge: bench_hypre with ${RB_HYPRE_LIBRARY}")
  add_executable(bench_hypre ${PROJECT_SOURCE_DIR}/bench/hypre/bench_hypre.c)
  target_include_directories(bench_hypre SYSTEM PRIVATE ${RB_HYPRE_INCLUDE_DIR})
  target_link_libraries(bench_hypre PRIVATE ${RB_HYPRE_LIBRARY} MPI::MPI_C m)
endif()
