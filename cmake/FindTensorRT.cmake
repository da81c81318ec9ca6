# FindTensorRT
# ------------
# Finds the TensorRT headers and libraries (TensorRT >= 10).
#
# Search order: the TensorRT_ROOT CMake variable, the TENSORRT_ROOT / TensorRT_ROOT
# environment variables, then the standard places: Debian/Ubuntu packages and JetPack
# (/usr/include/<arch>-linux-gnu, /usr/lib/<arch>-linux-gnu), tar installs in
# /usr/local/TensorRT*, and /opt/tensorrt.
#
# Options:
#   BQQ_TRT_COMPILE_CHECK  headers only: TensorRT counts as found without libraries, so code
#                          can be compile-checked against public headers (no link, no run).
#
# Results:
#   TensorRT_FOUND, TensorRT_VERSION (from NvInferVersion.h), TensorRT_INCLUDE_DIRS,
#   TensorRT_LIBRARIES, TensorRT_nvonnxparser_FOUND,
#   TensorRT_HEADERS_ONLY    TRUE in compile-check mode (no library may be linked)
# Imported targets (include directories are SYSTEM, so TensorRT's own deprecation warnings
# never fail a -Werror build):
#   TensorRT::headers        include directory only (always)
#   TensorRT::nvinfer        libnvinfer (not defined in compile-check mode)
#   TensorRT::nvonnxparser   libnvonnxparser, when found

option(BQQ_TRT_COMPILE_CHECK "Compile-check the TensorRT plugin against TensorRT headers only (no libraries, no link)" OFF)

set(_trt_roots)
foreach(_root IN ITEMS "${TensorRT_ROOT}" "$ENV{TENSORRT_ROOT}" "$ENV{TensorRT_ROOT}")
  if(_root)
    list(APPEND _trt_roots "${_root}")
  endif()
endforeach()
file(GLOB _trt_tar_installs LIST_DIRECTORIES TRUE "/usr/local/TensorRT*")
list(APPEND _trt_roots ${_trt_tar_installs} /opt/tensorrt /usr/local/tensorrt)

set(_trt_arch_dirs)
if(CMAKE_LIBRARY_ARCHITECTURE)
  list(APPEND _trt_arch_dirs "${CMAKE_LIBRARY_ARCHITECTURE}")
endif()
list(APPEND _trt_arch_dirs x86_64-linux-gnu aarch64-linux-gnu)
list(REMOVE_DUPLICATES _trt_arch_dirs)

set(_trt_include_paths)
set(_trt_lib_paths)
foreach(_root IN LISTS _trt_roots)
  list(APPEND _trt_include_paths "${_root}/include")
  list(APPEND _trt_lib_paths "${_root}/lib" "${_root}/lib64" "${_root}/targets/x86_64-linux-gnu/lib"
       "${_root}/targets/aarch64-linux-gnu/lib")
endforeach()
foreach(_arch IN LISTS _trt_arch_dirs)
  list(APPEND _trt_include_paths "/usr/include/${_arch}")
  list(APPEND _trt_lib_paths "/usr/lib/${_arch}")
endforeach()

# HINTS come before the system paths, so TensorRT_ROOT wins over a system install.
find_path(TensorRT_INCLUDE_DIR NAMES NvInfer.h HINTS ${_trt_include_paths})

set(TensorRT_VERSION "")
if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(STRINGS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_version_lines REGEX "^#define [A-Z_]+ ")
  # NV_TENSORRT_MAJOR is either a number (10.0-10.13) or the name of another macro such as
  # TRT_MAJOR_ENTERPRISE (10.14+, 11.x): resolve one level of indirection.
  function(_trt_read_define name out)
    set(_value "")
    foreach(_line IN LISTS _trt_version_lines)
      if(_line MATCHES "^#define ${name}[ \t]+([A-Za-z0-9_]+)")
        set(_value "${CMAKE_MATCH_1}")
        break()
      endif()
    endforeach()
    if(_value MATCHES "^[A-Za-z_]")
      foreach(_line IN LISTS _trt_version_lines)
        if(_line MATCHES "^#define ${_value}[ \t]+([0-9]+)")
          set(_value "${CMAKE_MATCH_1}")
          break()
        endif()
      endforeach()
    endif()
    set(${out} "${_value}" PARENT_SCOPE)
  endfunction()
  _trt_read_define(NV_TENSORRT_MAJOR _trt_major)
  _trt_read_define(NV_TENSORRT_MINOR _trt_minor)
  _trt_read_define(NV_TENSORRT_PATCH _trt_patch)
  if(_trt_major MATCHES "^[0-9]+$" AND _trt_minor MATCHES "^[0-9]+$" AND _trt_patch MATCHES "^[0-9]+$")
    set(TensorRT_VERSION "${_trt_major}.${_trt_minor}.${_trt_patch}")
  endif()
endif()

if(NOT BQQ_TRT_COMPILE_CHECK)
  # nvinfer_<major> is the Windows name; Linux packages ship libnvinfer.so.
  find_library(TensorRT_nvinfer_LIBRARY NAMES nvinfer nvinfer_10 nvinfer_11 HINTS ${_trt_lib_paths})
  find_library(TensorRT_nvonnxparser_LIBRARY NAMES nvonnxparser nvonnxparser_10 nvonnxparser_11
               HINTS ${_trt_lib_paths})
  set(_trt_required TensorRT_INCLUDE_DIR TensorRT_nvinfer_LIBRARY)
else()
  set(_trt_required TensorRT_INCLUDE_DIR)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT REQUIRED_VARS ${_trt_required} VERSION_VAR TensorRT_VERSION)

if(TensorRT_FOUND AND TensorRT_VERSION AND TensorRT_VERSION VERSION_LESS 10.0)
  message(STATUS "bqq: TensorRT ${TensorRT_VERSION} at ${TensorRT_INCLUDE_DIR} is older than 10.0 "
                 "(the plugin needs IPluginV3) - ignoring it")
  set(TensorRT_FOUND FALSE)
endif()

set(TensorRT_HEADERS_ONLY ${BQQ_TRT_COMPILE_CHECK})
set(TensorRT_nvonnxparser_FOUND FALSE)
if(TensorRT_FOUND)
  set(TensorRT_INCLUDE_DIRS "${TensorRT_INCLUDE_DIR}")
  set(TensorRT_LIBRARIES "")
  if(NOT TARGET TensorRT::headers)
    add_library(TensorRT::headers INTERFACE IMPORTED)
    set_target_properties(TensorRT::headers PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
  endif()
  # TensorRT::<name> for the found library, linking `dependency` in turn.
  function(_trt_import_library name dependency)
    list(APPEND TensorRT_LIBRARIES "${TensorRT_${name}_LIBRARY}")
    set(TensorRT_LIBRARIES "${TensorRT_LIBRARIES}" PARENT_SCOPE)
    if(NOT TARGET TensorRT::${name})
      add_library(TensorRT::${name} UNKNOWN IMPORTED)
      set_target_properties(TensorRT::${name} PROPERTIES IMPORTED_LOCATION "${TensorRT_${name}_LIBRARY}"
                            INTERFACE_LINK_LIBRARIES ${dependency})
    endif()
  endfunction()
  if(NOT BQQ_TRT_COMPILE_CHECK)
    _trt_import_library(nvinfer TensorRT::headers)
    if(TensorRT_nvonnxparser_LIBRARY)
      set(TensorRT_nvonnxparser_FOUND TRUE)
      _trt_import_library(nvonnxparser TensorRT::nvinfer)
    endif()
  endif()
  if(BQQ_TRT_COMPILE_CHECK)
    message(STATUS "bqq: BQQ_TRT_COMPILE_CHECK=ON - TensorRT ${TensorRT_VERSION} headers only, nothing is linked")
  endif()
endif()

mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_nvinfer_LIBRARY TensorRT_nvonnxparser_LIBRARY)
unset(_trt_roots)
unset(_trt_tar_installs)
unset(_trt_arch_dirs)
unset(_trt_include_paths)
unset(_trt_lib_paths)
unset(_trt_required)
