package dev.mallquest.kstreams;

import java.time.Instant;
import java.time.LocalDate;

/**
 * An instant as mallquest keeps it (src/domain/time.rs): seconds since the epoch and
 * nanoseconds, compared as an instant whatever UTC offset it was written in. A leap second
 * ({@code :60}) is kept as second 59 with nanos at or past 1e9, as chrono does.
 */
public final class Instant9 implements Comparable<Instant9> {
    public final long secs;
    public final int nanos;

    public Instant9(long secs, int nanos) {
        this.secs = secs;
        this.nanos = nanos;
    }

    @Override
    public int compareTo(Instant9 o) {
        int c = Long.compare(secs, o.secs);
        return c != 0 ? c : Integer.compare(nanos, o.nanos);
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof Instant9 i && i.secs == secs && i.nanos == nanos;
    }

    @Override
    public int hashCode() {
        return Long.hashCode(secs) * 31 + nanos;
    }

    /**
     * RFC 3339 as chrono's {@code DateTime::parse_from_rfc3339} reads it: {@code
     * YYYY-MM-DD[Tt ]hh:mm:ss[.digits](Z|z|+hh:mm|-hh:mm)}, any number of fraction digits
     * (past 9 ignored), an offset under 24 h. {@code null} when it is not one.
     */
    public static Instant9 parse(String s) {
        int n = s.length();
        if (n < 20) return null;
        int year = digits(s, 0, 4), month = digits(s, 5, 2), day = digits(s, 8, 2);
        int hour = digits(s, 11, 2), min = digits(s, 14, 2), sec = digits(s, 17, 2);
        if (year < 0 || month < 0 || day < 0 || hour < 0 || min < 0 || sec < 0) return null;
        char sep = s.charAt(10);
        if (s.charAt(4) != '-' || s.charAt(7) != '-' || s.charAt(13) != ':' || s.charAt(16) != ':'
                || (sep != 'T' && sep != 't' && sep != ' ')) {
            return null;
        }
        if (month < 1 || month > 12 || day < 1 || day > LocalDate.of(year, month, 1).lengthOfMonth()) {
            return null;
        }
        int leap = 0;
        if (sec == 60) {
            sec = 59;
            leap = 1_000_000_000;
        }
        if (hour > 23 || min > 59 || sec > 59) return null;
        int i = 19;
        long nanos = 0;
        if (s.charAt(i) == '.') {
            i++;
            int start = i;
            while (i < n && isDigit(s.charAt(i))) {
                if (i - start < 9) nanos = nanos * 10 + (s.charAt(i) - '0');
                i++;
            }
            int used = Math.min(i - start, 9);
            if (used == 0) return null;
            for (int k = used; k < 9; k++) nanos *= 10;
        }
        if (i >= n) return null;
        long offset;
        char c = s.charAt(i);
        if (c == 'Z' || c == 'z') {
            offset = 0;
            i++;
        } else {
            boolean negative;
            if (c == '+') negative = false;
            else if (c == '-' || c == '\u2212') negative = true;
            else return null;
            i++;
            if (n - i != 5 || s.charAt(i + 2) != ':') return null;
            int oh = digits(s, i, 2), om = digits(s, i + 3, 2);
            if (oh < 0 || om < 0 || om > 59) return null;
            offset = oh * 3600L + om * 60L;
            if (offset >= 86_400) return null;
            if (negative) offset = -offset;
            i += 5;
        }
        if (i != n) return null;
        long days = LocalDate.of(year, month, day).toEpochDay();
        long secs = days * 86_400 + hour * 3600L + min * 60L + sec - offset;
        return new Instant9(secs, (int) (nanos + leap));
    }

    private static boolean isDigit(char c) {
        return c >= '0' && c <= '9';
    }

    /** The number written by {@code len} ASCII digits at {@code at}, or -1. */
    private static int digits(String s, int at, int len) {
        if (at + len > s.length()) return -1;
        int v = 0;
        for (int k = at; k < at + len; k++) {
            char c = s.charAt(k);
            if (!isDigit(c)) return -1;
            v = v * 10 + (c - '0');
        }
        return v;
    }

    /** UTC with {@code Z}, sub-second digits in groups of 3 only when present (as mallquest). */
    public String toRfc3339() {
        boolean leap = nanos >= 1_000_000_000;
        String text = Instant.ofEpochSecond(secs, leap ? nanos - 1_000_000_000 : nanos).toString();
        if (leap) {
            int t = text.indexOf('T');
            text = text.substring(0, t + 7) + "60" + text.substring(t + 9);
        }
        return text;
    }

    @Override
    public String toString() {
        return toRfc3339();
    }
}
