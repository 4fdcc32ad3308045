package dev.mallquest.kstreams;

/** A decoded, validated receipt (mallquest's {@code domain::Receipt}). */
public final class Receipt {
    public enum Kind { PURCHASE, REFUND, REDEMPTION, REDEMPTION_REVERSAL }

    public final String receiptId;
    public final String userId;
    public final String storeId;
    /** Minor units: 1..=100_000_000 for purchases and refunds. */
    public final long amount;
    public final Instant9 issuedAt;
    public final Kind kind;
    /** The receipt a refund (or reversal) gives back; null otherwise. */
    public final String refundOf;
    /** A redemption's coins; 0 otherwise. */
    public final long coins;

    public Receipt(String receiptId, String userId, String storeId, long amount, Instant9 issuedAt,
                   Kind kind, String refundOf, long coins) {
        this.receiptId = receiptId;
        this.userId = userId;
        this.storeId = storeId;
        this.amount = amount;
        this.issuedAt = issuedAt;
        this.kind = kind;
        this.refundOf = refundOf;
        this.coins = coins;
    }
}
