package dev.mallquest.kstreams;

import java.util.Map;
import java.util.TreeMap;

/**
 * mallquest's {@code [rules]} as far as the core fold uses them, with its defaults (README,
 * "Configuration reference"). No rule history, no game.
 */
public final class Rules {
    public String currency = "AED";
    /** Coins per 1.00 spent, before the store multiplier. */
    public long coinsPerUnit = 1;
    /** XP per purchase. */
    public long xpPerReceipt = 10;
    /** XP per whole 1.00 spent. */
    public long xpPerUnit = 1;
    /** level = min(maxLevel, 1 + isqrt(xp / levelXpBase)). */
    public long levelXpBase = 100;
    public int maxLevel = 100;
    public long levelUpBonusCoins = 50;
    /** store_id -> percent; unlisted stores earn 100. */
    public final Map<String, Long> storeMultipliers = new TreeMap<>();
    /** {@code [processing] dedup_window_days}, in seconds of event time. */
    public long dedupWindowSecs = 90L * 86_400;

    public long multiplierPct(String storeId) {
        Long pct = storeMultipliers.get(storeId);
        return pct == null ? 100 : pct;
    }

    public int levelFor(long xp) {
        long steps = Math.max(xp, 0) / levelXpBase;
        long level = 1 + isqrt(steps);
        return (int) Math.min(level, maxLevel);
    }

    static long isqrt(long v) {
        long r = (long) Math.sqrt((double) v);
        while (r * r > v) r--;
        while ((r + 1) * (r + 1) <= v) r++;
        return r;
    }

    /**
     * Default rules, with store multipliers from {@code KSTREAMS_STORE_MULTIPLIERS}
     * ({@code "s-07=200,s-13=150"}: percent per store) when set.
     */
    public static Rules fromEnv() {
        Rules rules = new Rules();
        String spec = System.getenv("KSTREAMS_STORE_MULTIPLIERS");
        if (spec != null && !spec.isBlank()) {
            for (String pair : spec.split(",")) {
                String[] kv = pair.trim().split("=", 2);
                if (kv.length != 2) {
                    throw new IllegalArgumentException("KSTREAMS_STORE_MULTIPLIERS: want store=percent, got " + pair);
                }
                long pct = Long.parseLong(kv[1].trim());
                if (pct < 0 || pct > 10_000) {
                    throw new IllegalArgumentException("KSTREAMS_STORE_MULTIPLIERS: percent out of 0..10000: " + pair);
                }
                rules.storeMultipliers.put(kv[0].trim(), pct);
            }
        }
        return rules;
    }
}
