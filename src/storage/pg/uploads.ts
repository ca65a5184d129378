/**
 * Upload-session rows in PostgreSQL (ports.ts `UploadRows`): what the S3 upload store keeps
 * in the shared metadata store so any replica carries a session on. Same `uploads` table
 * as SQLite's (migrations.ts); each call is one statement or one change.
 */
import type { RepoName } from '../../registry/names.js';
import type { UploadRows } from '../ports.js';
import { type Exec, poolExec } from './exec.js';
import { ensureRepo } from './metadata.js';
import type { PgPoolHandle } from './pool.js';

export class PgUploadRows implements UploadRows {
  private readonly x: Exec;

  constructor(db: PgPoolHandle) {
    this.x = poolExec(db);
  }

  async createUpload(id: string, repo: RepoName): Promise<{ createdAt: number }> {
    const createdAt = Date.now();
    await this.x.change(async (x) => {
      await x.rows('INSERT INTO uploads(id, repo_id, created_at) VALUES ($1, $2, $3)', [id, await ensureRepo(x, repo), createdAt]);
    });
    return { createdAt };
  }

  async upload(id: string): Promise<{ repo: RepoName; createdAt: number } | undefined> {
    const rows = await this.x.rows<{ repo: string; created_at: number }>(
      { name: 'rm_upload', text: 'SELECT r.name AS repo, u.created_at FROM uploads u JOIN repositories r ON r.id = u.repo_id WHERE u.id = $1' },
      [id],
    );
    const row = rows[0];
    return row && { repo: row.repo as RepoName, createdAt: Number(row.created_at) };
  }

  async deleteUpload(id: string): Promise<void> {
    await this.x.count('DELETE FROM uploads WHERE id = $1', [id]);
  }

  async uploads(): Promise<Array<{ id: string; createdAt: number }>> {
    const rows = await this.x.rows<{ id: string; created_at: number }>('SELECT id, created_at FROM uploads', []);
    return rows.map((r) => ({ id: r.id, createdAt: Number(r.created_at) }));
  }
}
