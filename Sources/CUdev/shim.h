/* CUdev: libudev (Debian's libudev-dev), for finding KernelGlue devices. */
#include <libudev.h>
