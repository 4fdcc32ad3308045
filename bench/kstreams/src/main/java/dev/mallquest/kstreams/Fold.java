package dev.mallquest.kstreams;

import java.math.BigInteger;

/**
 * mallquest's core fold (src/domain/fold.rs: purchase and refund, without campaigns,
 * missions, streaks, badges, periods or redemptions), in checked 64-bit integer arithmetic:
 * a receipt whose totals would overflow is rejected ({@code overflow}) and changes nothing.
 */
public final class Fold {
    private Fold() {}

    /** What applying a receipt did: nothing ({@link #DUPLICATE}) or the ledger writes that go with the changed state. */
    public static final class Effect {
        public static final Effect DUPLICATE = new Effect(null, null, 0);
        /** The receipt's own ledger entry. */
        public final LedgerEntry entry;
        /** A refund's original, with its refunded total raised. */
        public final LedgerEntry original;
        /** Levels gained (for a level-up count). */
        public final int levelsGained;

        Effect(LedgerEntry entry, LedgerEntry original, int levelsGained) {
            this.entry = entry;
            this.original = original;
            this.levelsGained = levelsGained;
        }
    }

    /**
     * Folds {@code r} into {@code s}. {@code existing}: the ledger entry under the receipt's
     * own id; {@code original}: the one under its refund_of (both of this user, inside the
     * dedup window). On a rejection {@code s} is unchanged.
     */
    public static Effect apply(UserState s, LedgerEntry existing, LedgerEntry original, Receipt r,
                               int partition, long offset, Rules rules) throws Reject.Rejected {
        if (existing != null) {
            if (existing.sameReceipt(r)) return Effect.DUPLICATE;
            throw Reject.CONFLICTING_DUPLICATE.error;
        }
        Effect effect;
        try {
            switch (r.kind) {
                case PURCHASE:
                    effect = purchase(s, r, rules);
                    break;
                case REFUND:
                    effect = refund(s, original, r);
                    break;
                default:
                    throw Reject.UNSUPPORTED.error;
            }
            s.version = Math.addExact(s.version, 1);
        } catch (ArithmeticException e) {
            throw Reject.OVERFLOW.error;
        }
        s.sourcePartition = partition;
        s.sourceOffset = offset;
        return effect;
    }

    private static Effect purchase(UserState s, Receipt r, Rules rules) {
        long earnedCoins = Math.multiplyExact(Math.multiplyExact(r.amount, rules.coinsPerUnit),
                rules.multiplierPct(r.storeId)) / 10_000;
        long earnedXp = Math.addExact(Math.multiplyExact(r.amount / 100, rules.xpPerUnit), rules.xpPerReceipt);
        // Every figure first, then the state: nothing changes when one overflows.
        long xp = Math.addExact(s.xp, earnedXp);
        int level = Math.max(rules.levelFor(xp), s.level);
        int gained = level - s.level;
        long coinsDelta = Math.addExact(earnedCoins, Math.multiplyExact((long) gained, rules.levelUpBonusCoins));
        long coins = Math.addExact(s.coins, coinsDelta);
        long spent = Math.addExact(s.totalSpent, r.amount);
        s.coins = coins;
        s.xp = xp;
        s.level = level;
        s.totalSpent = spent;
        s.receiptCount++;
        s.addStore(r.storeId);
        if (s.firstReceiptAt == null || r.issuedAt.compareTo(s.firstReceiptAt) < 0) s.firstReceiptAt = r.issuedAt;
        if (s.lastReceiptAt == null || r.issuedAt.compareTo(s.lastReceiptAt) > 0) s.lastReceiptAt = r.issuedAt;
        LedgerEntry entry = new LedgerEntry(Receipt.Kind.PURCHASE, null, r.storeId, r.amount, r.issuedAt,
                earnedCoins, earnedXp, 0);
        return new Effect(entry, null, gained);
    }

    private static Effect refund(UserState s, LedgerEntry orig, Receipt r) throws Reject.Rejected {
        if (orig == null || orig.kind != Receipt.Kind.PURCHASE) throw Reject.UNKNOWN_ORIGINAL.error;
        long r0 = orig.refunded;
        long r1 = Math.addExact(r0, r.amount);
        if (r1 > orig.amount) throw Reject.REFUND_EXCEEDS_ORIGINAL.error;
        // floor(earned * R1 / amount) - floor(earned * R0 / amount): partial refunds add up
        // to exactly what the purchase earned, whatever their order.
        long coinsBack = Math.subtractExact(scale(orig.earnedCoins, r1, orig.amount), scale(orig.earnedCoins, r0, orig.amount));
        long xpBack = Math.subtractExact(scale(orig.earnedXp, r1, orig.amount), scale(orig.earnedXp, r0, orig.amount));
        long coins = Math.subtractExact(s.coins, coinsBack);
        long xp = Math.subtractExact(s.xp, xpBack);
        long spent = Math.subtractExact(s.totalSpent, r.amount);
        s.coins = coins;
        s.xp = xp; // levels never go down
        s.totalSpent = spent;
        s.refundCount++;
        LedgerEntry updated = new LedgerEntry(orig.kind, orig.refundOf, orig.storeId, orig.amount, orig.issuedAt,
                orig.earnedCoins, orig.earnedXp, r1);
        LedgerEntry entry = new LedgerEntry(Receipt.Kind.REFUND, r.refundOf, r.storeId, r.amount, r.issuedAt, 0, 0, 0);
        return new Effect(entry, updated, 0);
    }

    /** floor(v * num / den) for non-negative operands, exact past 64 bits (mallquest uses i128). */
    static long scale(long v, long num, long den) {
        long hi = Math.multiplyHigh(v, num);
        long lo = v * num;
        if ((hi == 0 && lo >= 0) || (hi == -1 && lo < 0)) return lo / den;
        return BigInteger.valueOf(v).multiply(BigInteger.valueOf(num)).divide(BigInteger.valueOf(den)).longValueExact();
    }
}
