#ifndef WSTAP_CPCAP_SHIM_H
#define WSTAP_CPCAP_SHIM_H
#include <pcap/pcap.h>
#endif
