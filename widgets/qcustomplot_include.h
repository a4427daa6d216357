#pragma once
// qcustomplot.h uses the bare Qt keywords (signals, slots, emit), which this project turns off
// (and foreach) with QT_NO_KEYWORDS; define them around the one include and nowhere else.
#ifdef QT_NO_KEYWORDS
#define signals Q_SIGNALS
#define slots Q_SLOTS
#define emit Q_EMIT
#define foreach Q_FOREACH
#include <qcustomplot.h>
#undef signals
#undef slots
#undef emit
#undef foreach
#else
#include <qcustomplot.h>
#endif
