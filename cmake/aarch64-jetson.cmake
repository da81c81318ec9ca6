# Cross-compiling for a Jetson (aarch64, JetPack 6.x: CUDA 12.6, TensorRT 10.3, Orin sm_87)
# from an x86_64 Linux host:
#
#   cmake -S . -B build-jetson -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-jetson.cmake \
#         -DJETSON_SYSROOT=/path/to/jetson-rootfs [-DCMAKE_CUDA_ARCHITECTURES=87]
#
# JETSON_SYSROOT is a copy of the device's root file system (e.g. `rsync -a jetson:/{usr,lib} rootfs/`)
# holding its CUDA (/usr/local/cuda) and TensorRT (/usr/include|lib/aarch64-linux-gnu).
# Host needs: aarch64-linux-gnu-gcc/g++ (Debian/Ubuntu: g++-aarch64-linux-gnu) and, for the
# CUDA parts, a CUDA toolkit of the device's major version with its aarch64 cross target
# (cuda-cross-aarch64). Without nvcc only the CPU parts (the .npy tools) are built.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

set(JETSON_TRIPLE aarch64-linux-gnu CACHE STRING "cross compiler prefix")
set(CMAKE_C_COMPILER ${JETSON_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${JETSON_TRIPLE}-g++)

set(JETSON_SYSROOT "" CACHE PATH "copy of the Jetson's root file system")
if(JETSON_SYSROOT)
  set(CMAKE_SYSROOT "${JETSON_SYSROOT}")
  list(APPEND CMAKE_FIND_ROOT_PATH "${JETSON_SYSROOT}")
  # FindTensorRT.cmake then finds JetPack's TensorRT in <sysroot>/usr/include|lib/aarch64-linux-gnu;
  # FindCUDAToolkit takes the aarch64 CUDA libraries from the host toolkit's targets/aarch64-linux.
endif()

# nvcc runs on the host and targets aarch64 through the host-side cross compiler.
set(CMAKE_CUDA_HOST_COMPILER ${CMAKE_CXX_COMPILER})
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 87)  # Orin; use 110 for Thor (JetPack 7, CUDA 13)
endif()

# Programs from the host, everything else from the sysroot.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
