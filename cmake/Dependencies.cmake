# Dependencies.cmake — finds resbridge's dependencies the standard way and
# stops with the name of the Debian package when one is missing. Used by the
# build and, installed, by resbridgeConfig.cmake. Sets RB_DEPENDENCY_TARGETS.
include_guard(GLOBAL)
find_package(PkgConfig QUIET)
if(NOT PKG_CONFIG_FOUND)
  message(FATAL_ERROR "resbridge: pkg-config not found. Install it: apt-get install pkg-config (or run scripts/setup.sh)")
endif()

macro(rb_require found what package)
  if(NOT ${found})
    message(FATAL_ERROR "resbridge: ${what} not found. Install the Debian package: apt-get install ${package} "
                        "(scripts/setup.sh installs everything resbridge needs)")
  endif()
endmacro()

# OpenBLAS first, and GSL without gslcblas: OpenBLAS's cblas_* symbols must win.
pkg_check_modules(RB_OPENBLAS QUIET IMPORTED_TARGET GLOBAL openblas)
rb_require(RB_OPENBLAS_FOUND "OpenBLAS (pkg-config openblas)" libopenblas-dev)
pkg_check_modules(RB_LAPACKE QUIET IMPORTED_TARGET GLOBAL lapacke)
rb_require(RB_LAPACKE_FOUND "LAPACKE (pkg-config lapacke)" liblapacke-dev)

find_package(GSL QUIET)
rb_require(GSL_FOUND "GSL" libgsl-dev)
if(NOT TARGET rb_gsl_nocblas)
  add_library(rb_gsl_nocblas INTERFACE IMPORTED GLOBAL)
  set_target_properties(rb_gsl_nocblas PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${GSL_INCLUDE_DIRS}"
    INTERFACE_LINK_LIBRARIES "${GSL_LIBRARY}")
endif()

find_package(SUNDIALS 6.4 QUIET COMPONENTS cvode cvodes nvecserial sunmatrixdense sunlinsoldense)
rb_require(SUNDIALS_FOUND "SUNDIALS >= 6.4 (cvode, cvodes, nvecserial, sunmatrixdense, sunlinsoldense)" libsundials-dev)

find_package(ZLIB QUIET)
rb_require(ZLIB_FOUND "zlib" zlib1g-dev)

find_package(OpenMP QUIET COMPONENTS C)
rb_require(OpenMP_C_FOUND "OpenMP for C" "build-essential (gcc with libgomp)")

find_library(RB_LIBM m)

# CVODES only (it contains CVODE): libsundials_cvode defines the same CVode* symbols over a different CVodeMem.
set(RB_DEPENDENCY_TARGETS
  PkgConfig::RB_LAPACKE PkgConfig::RB_OPENBLAS rb_gsl_nocblas
  SUNDIALS::cvodes SUNDIALS::nvecserial SUNDIALS::sunmatrixdense SUNDIALS::sunlinsoldense
  ZLIB::ZLIB OpenMP::OpenMP_C ${RB_LIBM})
