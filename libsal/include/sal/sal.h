/* libsal: shift networks on the CPU.  Umbrella header; see core.h for the conventions. */
#ifndef SAL_SAL_H
#define SAL_SAL_H
#include "sal/core.h"
#include "sal/active_shift.h"
#include "sal/attention.h"
#include "sal/conv.h"
#include "sal/count.h"
#include "sal/data.h"
#include "sal/gather.h"
#include "sal/layers.h"
#include "sal/net.h"
#include "sal/shift.h"
#include "sal/shiftconv.h"
#include "sal/taps.h"
#endif
