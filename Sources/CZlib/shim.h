#ifndef WSTAP_CZLIB_SHIM_H
#define WSTAP_CZLIB_SHIM_H
#include <zlib.h>

// inflateInit2/deflateInit2 are macros, which Swift cannot call; these wrappers can be.
static inline int wstap_inflateInit2(z_streamp stream, int windowBits) {
    return inflateInit2(stream, windowBits);
}
static inline int wstap_deflateInit2(z_streamp stream, int level, int windowBits, int memLevel) {
    return deflateInit2(stream, level, Z_DEFLATED, windowBits, memLevel, Z_DEFAULT_STRATEGY);
}
#endif
