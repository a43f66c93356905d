//! Placeholder until the expression language lands.
#[derive(Debug, Clone)]
pub struct Expr;
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub offset: usize,
    pub message: String,
}
impl std::fmt::Display for ExprError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
pub fn parse(_src: &str) -> Result<Expr, ExprError> {
    Err(ExprError {
        offset: 0,
        message: "not yet".into(),
    })
}
impl Expr {
    pub fn evaluate(&self, _lookup: &dyn Fn(&str) -> Option<String>) -> bool {
        false
    }
    pub fn variables(&self) -> Vec<String> {
        Vec::new()
    }
}
